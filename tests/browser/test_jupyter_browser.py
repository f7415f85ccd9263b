"""The widgets in a real browser: Voila serves a notebook, Debian's Chromium renders it.

Needs ``/usr/bin/chromium`` (``scripts/install-system-deps.sh`` installs it), the PyPI
``playwright`` package (driving that Chromium; ``playwright install`` is never run) and
``voila``. Screenshots of each widget go to ``$RADIOBJECT_SCREENSHOTS`` (or the test's tmp dir).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
# the factories whose loaders the notebook's last cell tunes (segmentation's: the first tuner)
FACTORIES = (
    "create_training_dataloader",
    "create_validation_dataloader",
    "create_inference_dataloader",
    "create_distributed_dataloader",
)
NOTEBOOK = Path(__file__).with_name("widgets_demo.ipynb")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"{CHROMIUM} is missing: scripts/install-system-deps.sh installs it (apt)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"voila exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    pytest.fail(f"voila did not listen within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def voila_url(tmp_path: Path) -> Iterator[str]:
    pytest.importorskip("voila")
    notebook = tmp_path / NOTEBOOK.name
    shutil.copy(NOTEBOOK, notebook)
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    # the kernel spec runs "python": make it this interpreter
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    log = tmp_path / "voila.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "voila", str(notebook), "--no-browser",
                f"--port={port}", "--Voila.ip=127.0.0.1", f"--token={token}",
                "--show_tracebacks=True", "--Voila.root_dir=" + str(tmp_path),
            ],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_listening(port, proc, log)
        yield f"http://127.0.0.1:{port}/?token={token}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # voila and the kernel it started
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def test_widgets_render_and_respond_in_chromium(voila_url: str, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    shots = Path(os.environ.get("RADIOBJECT_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(voila_url, timeout=90_000, wait_until="domcontentloaded")

            # -- CollectionBrowser: three planes, thumbnails; a slider move redraws -----------
            axial = page.locator(".radiobject-browser img.radiobject-image-axial")
            try:
                axial.wait_for(state="visible", timeout=90_000)
            except sync_api.TimeoutError:  # say what the page and the server showed instead
                log = (tmp_path / "voila.log").read_text(errors="replace")[-4000:]
                pytest.fail(
                    f"no browser widget; page:\n{page.inner_text('body')[-4000:]}"
                    f"\nvoila log:\n{log}"
                )
            browser = page.locator(".radiobject-browser")
            assert browser.locator("img").count() >= 3 + 4  # planes + a thumbnail per subject
            for plane in ("axial", "coronal", "sagittal"):
                box = browser.locator(f"img.radiobject-image-{plane}").bounding_box()
                assert box is not None, plane
                assert box["width"] == 240, plane  # 48 voxels x 5, shown at the PNG's size
                # the crosshair is drawn by the page over exactly the image
                cross = browser.locator(f".radiobject-crosshair-{plane} .radiobject-crosshair")
                over = cross.bounding_box()
                assert over is not None, plane
                assert all(abs(over[k] - box[k]) <= 1 for k in box), (plane, over, box)
            coronal_line = browser.locator(
                ".radiobject-crosshair-coronal .radiobject-crosshair div"
            )
            line_before = coronal_line.first.bounding_box()
            assert "sub-000" in browser.inner_text()
            browser.screenshot(path=str(shots / "browser_collection_browser.png"))

            before = axial.get_attribute("src")
            handle = browser.locator(".radiobject-slider-axial .noUi-handle")
            handle.focus()
            for _ in range(3):
                page.keyboard.press("ArrowRight")
            page.wait_for_function(
                "([sel, old]) => document.querySelector(sel).src !== old",
                arg=[".radiobject-browser img.radiobject-image-axial", before],
                timeout=20_000,
            )
            assert axial.get_attribute("src") != before
            page.wait_for_function(
                "() => document.querySelector('.radiobject-browser').innerText"
                ".includes('(24, 24, 19)')",
                timeout=20_000,
            )  # the readout followed: z went from 16 to 19
            # the scrub latency readout: last and p95 update time, bytes sent, PNGs encoded
            page.wait_for_function(
                "() => (document.querySelector('.radiobject-browser .radiobject-latency')"
                "?.innerText || '').includes('PNG')",
                timeout=20_000,
            )
            latency = browser.locator(".radiobject-latency").inner_text()
            shown = r"update \d+ ms · p95 \d+ ms over \d+ · sent [\d.]+ kB \(\d PNG\)"
            assert re.search(shown, latency), latency
            line_after = coronal_line.first.bounding_box()
            assert line_before is not None
            assert line_after is not None
            assert line_after["y"] == pytest.approx(line_before["y"] - 3 * 5, abs=1)  # z up 3

            # -- PatchPreview: a card per patch and the location view --------------------------
            preview = page.locator(".radiobject-patch-preview")
            preview.scroll_into_view_if_needed()
            assert preview.locator("img").count() >= 6 + 1
            assert "touch the mask" in preview.inner_text()
            preview.screenshot(path=str(shots / "browser_patch_preview.png"))

            # -- LoaderTuner(loader): the notebook's run is listed; Start runs again, live ------
            tuner = page.locator(".radiobject-loader-tuner").first  # on the preview's loader
            tuner.scroll_into_view_if_needed()
            assert "run 1" in tuner.inner_text()
            tuner.get_by_role("button", name="Start").click()
            page.wait_for_function(
                "() => document.querySelector('.radiobject-loader-tuner').innerText"
                ".includes('run 2: w0')",
                timeout=30_000,
            )
            page.wait_for_function(
                "() => document.querySelector('.radiobject-loader-tuner')"
                ".querySelectorAll('tbody tr').length >= 2",
                timeout=30_000,
            )
            tuner.screenshot(path=str(shots / "browser_loader_tuner.png"))

            # -- Auto-tune: trials appear as runs, then the code to paste ----------------------
            rows = tuner.locator("tbody tr").count()
            tuner.get_by_role("button", name="Auto-tune").click()
            page.wait_for_function(
                "() => document.querySelector('.radiobject-loader-tuner')"
                f".querySelectorAll('tbody tr').length >= {rows + 2}",
                timeout=60_000,
            )  # the start point and at least one step: runs of their own, listed as they end
            code = tuner.locator("pre.radiobject-autotune-code")
            code.wait_for(state="visible", timeout=60_000)
            text = code.inner_text()
            assert "configure(read=ReadConfig(" in text, text
            assert "create_segmentation_dataloader(" in text, text
            assert "where the time goes" in tuner.inner_text()
            tuner.screenshot(path=str(shots / "browser_loader_tuner_autotune.png"))

            # -- LoaderTuner(loader) of every other factory: Start runs it in place ------------
            for factory in FACTORIES:
                other = page.locator(f".radiobject-tuner-{factory}")
                other.scroll_into_view_if_needed()
                assert "run 1" not in other.inner_text(), factory
                other.get_by_role("button", name="Start").click()
                page.wait_for_function(
                    f"() => document.querySelector('.radiobject-tuner-{factory}')"
                    ".querySelectorAll('tbody tr').length >= 1",
                    timeout=30_000,
                )
                text = other.inner_text()
                assert "run 1: w0 b4 p16" in text, (factory, text[-2000:])
                assert "failed" not in text, (factory, text[-2000:])
            other.screenshot(path=str(shots / "browser_loader_tuner_factories.png"))
            page.screenshot(path=str(shots / "browser_page.png"), full_page=True)
            assert not errors, errors
        finally:
            chromium.close()
    assert time.monotonic() - started < 180
