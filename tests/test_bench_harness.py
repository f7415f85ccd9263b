"""The benchmark harness itself (benchmarks/run.py): rows independent of their order, the cold
mode really evicts, every loader yields radiobject's voxels as float32, the report's spreads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

pytest.importorskip("torch")
pytest.importorskip("blosc2")

import copies  # noqa: E402
import osprobe  # noqa: E402
import report  # noqa: E402

SHAPE = (48, 40, 32)
PATCH = 16
PEERS_NEED = {"tensorstore": "zarr", "zarr": "zarr", "monai-persistent": "monai",
              "monai-cache": "monai", "torchio": "torchio"}  # fmt: skip


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> copies.Copies:
    pytest.importorskip("nibabel")
    return copies.prepare(tmp_path_factory.mktemp("bench"), 4, SHAPE, PATCH, log=False)


# -- every loader reads radiobject's voxels, as float32 --------------------------------------------
@pytest.mark.parametrize("name", ["radiobject", "radiobject-loop", "npy", "nnunet", "b2-lz4hc",
                                  "tensorstore", "zarr", "monai-persistent", "monai-cache",
                                  "torchio", "nnunet-f32"])  # fmt: skip
def test_every_loader_yields_radiobjects_patches(cohort, name, tmp_path):
    if name in PEERS_NEED:
        pytest.importorskip(PEERS_NEED[name])  # zarr-python writes the copy tensorstore reads
        pytest.importorskip(name if name == "tensorstore" else PEERS_NEED[name])
    import engines
    import torch

    from radiobject import RadiObject

    coll = RadiObject(cohort.radi_uri).collection("T1w")
    volumes = [coll.volume(o).to_numpy() for o in cohort.obs_ids]  # float32, radiobject's read
    spec = engines.Spec(per=4, workers=0, budget_mb=64, seed=3, patch=PATCH, batch=4,
                        scratch=str(tmp_path))  # fmt: skip
    loader = engines.ENGINES[name].build(cohort, spec)
    seen, corners = 0, set()
    for batch in loader:
        image = batch["image"]
        assert type(image) is torch.Tensor
        assert image.dtype == torch.float32
        assert tuple(image.shape) == (4, 1, PATCH, PATCH, PATCH)
        for img, v, c in zip(image, batch["volume"], batch["corner"], strict=True):
            x, y, z = (int(a) for a in c)
            assert min(x, y, z) >= 0, "the loader did not say where its patch came from"
            want = volumes[int(v)][x : x + PATCH, y : y + PATCH, z : z + PATCH]
            np.testing.assert_array_equal(img[0].numpy(), want)
            corners.add((int(v), x, y, z))
        seen += int(image.shape[0])
    assert seen == 4 * 4  # one epoch: 4 volumes x 4 patches
    assert len(corners) > 4  # different positions, not one patch repeated


# the npy workers never touch TileDB; this test's process opened it for the cohort
@pytest.mark.filterwarnings("ignore:TileDB is a multithreading library")
def test_format_loaders_read_one_plan_whatever_the_workers(cohort, tmp_path):
    import engines

    def corners(workers: int) -> list[list[int]]:
        spec = engines.Spec(per=4, workers=workers, budget_mb=64, seed=5, patch=PATCH,
                            scratch=str(tmp_path))  # fmt: skip
        loader = engines.ENGINES["npy"].build(cohort, spec)
        out = [c.tolist() for _ in range(2) for b in loader for c in b["corner"]]
        engines.release(loader)
        return out

    assert corners(0) == corners(2)


def test_nnunet_layout_fits_the_caches_it_targets():
    blocks, chunks = copies.nnunet_blosc2_layout((1, 240, 240, 155), (64, 64, 64), 2)
    assert np.prod(blocks) * 2 <= 0.8 * copies.L1_BYTES  # a block fits L1
    assert np.prod(blocks) * 2 > 0.4 * copies.L1_BYTES  # halved no further than needed
    assert all(
        c % b == 0 or c == n for c, b, n in zip(chunks, blocks, (1, 240, 240, 155), strict=True)
    )
    assert np.mean(np.array(chunks[1:]) / 64) <= 1.5
    assert copies.nnunet_blosc2_layout((1, 240, 240, 155), (64, 64, 64), 4)[0] != blocks


# -- the cold mode evicts ------------------------------------------------------------------------
def test_cold_mode_evicts_from_the_page_cache(tmp_path):
    if osprobe._fs_type(tmp_path) in ("tmpfs", "ramfs"):
        with pytest.raises(RuntimeError, match="cannot be evicted"):
            osprobe.evict([tmp_path])
        pytest.skip("tmp_path is on tmpfs")
    path = tmp_path / "sub" / "blob.bin"
    path.parent.mkdir()
    path.write_bytes(np.random.default_rng(0).bytes(32 << 20))
    osprobe.warm([tmp_path])
    assert osprobe.resident_fraction(path) > 0.9
    assert osprobe.evict([tmp_path]) == 32 << 20  # the folder walked, the file found
    assert osprobe.resident_fraction(path) < 0.1
    osprobe.warm([path])
    assert osprobe.resident_fraction(path) > 0.9


def test_a_cold_row_evicts_every_engines_copy_and_a_warm_row_reads_its_own(cohort):
    import rows

    if osprobe._fs_type(cohort.root) in ("tmpfs", "ramfs"):
        pytest.skip("the cohort is on tmpfs")
    row = rows.Row(suite="ltr", kind="loader", engine="npy", workdir=str(cohort.root.parent),
                   n=cohort.n, shape=cohort.shape, patch=PATCH, page_cache="cold")  # fmt: skip
    files = [cohort.path("npy", 0), cohort.path("b2-lz4hc", 1), cohort.path("nii", 2)]
    osprobe.warm(files)
    rows._prepare_page_cache(row, cohort, "npy")
    assert max(osprobe.resident_fraction(f) for f in files) < 0.1
    rows._prepare_page_cache(dataclasses.replace(row, page_cache="warm"), cohort, "npy")
    assert osprobe.resident_fraction(files[0]) > 0.9  # the row's own copy, read once
    assert osprobe.resident_fraction(files[1]) < 0.1  # another engine's: left alone


def test_pss_counts_this_process_and_its_children():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)  # fmt: skip
    try:
        tree = osprobe.pss_tree()
        assert tree["processes"] >= 2
        assert tree["pss"] >= osprobe.pss(os.getpid())["pss"] > 0
        assert tree["anon"] > 0
        assert tree["file"] > 0
    finally:
        child.communicate(b"")


# -- rows do not depend on the rows before them ----------------------------------------------------
def test_rows_record_the_same_settings_in_either_order(cohort, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def run(order: str) -> dict[str, dict]:
        out = tmp_path / order
        cmd = [sys.executable, str(BENCH / "run.py"), "--suites", "ltr,fits",
               "--engines", "radiobject", "--per", "4", "--workers", "0", "--epochs", "1",
               "--repeats", "1", "--subjects", "4", "--shape", "x".join(map(str, SHAPE)),
               "--patch", str(PATCH), "--workdir", str(cohort.root.parent),
               "--results", str(out), "--order", order]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        recs = report.load(next(out.iterdir()))
        assert not [r for r in recs if "error" in r], recs
        return {r["key"]: r["settings"] for r in recs}

    forward, reverse = run("forward"), run("reverse")
    assert forward == reverse
    ltr = forward["ltr/radiobject/p4/w0/cold"]
    fits = forward["fits/radiobject/p4/w0/warm"]
    assert ltr["read_config"]["cache_mb"] < fits["read_config"]["cache_mb"]
    assert fits["read_config"]["local_tier_mb"] is None  # a default, not a previous row's 0
    assert not fits["tier_auto_on"]  # the cohort fits the default cache: the tier stays off


# -- the report ------------------------------------------------------------------------------------
def _fake(engine: str, train: list[float], suite: str = "fits", workers: int = 0) -> list[dict]:
    row = {"suite": suite, "kind": "loader", "engine": engine, "per": 4, "workers": workers,
           "n": 24, "shape": [240, 240, 155], "patch": 64, "epochs": 10}  # fmt: skip
    key = f"{suite}/{engine}/p4/w{workers}/warm"
    return [
        {"key": key, "row": row, "settings": {},
         "machine": {"describe": "box: cpu, 2 cores, load avg 1/1/1", "loadavg_1m": 0.5 + i},
         "metrics": {"train_s": t, "first_rate": 100.0 * (i + 1), "steady_rate": 1000.0 / t,
                     "pss_mb": {"pss": 500.0, "anon": 300.0, "file": 200.0},
                     "copy_mb": 50.0, "built_mb": 10.0, "samples_per_epoch": 96}}
        for i, t in enumerate(train)
    ]  # fmt: skip


def test_report_shows_median_min_max_and_bolds_only_wins(tmp_path):
    lines = (_fake("radiobject", [4.0, 2.0, 3.0]) + _fake("npy", [6.0, 5.0, 9.0])
             + _fake("npy", [7.0, 8.0, 9.0], workers=2))  # fmt: skip
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    text = report.render(report.load(tmp_path))
    ours = next(x for x in text.splitlines() if x.startswith("| radiobject"))
    npy = next(x for x in text.splitlines() if x.startswith("| `.npy`"))
    assert "**3.00 (2.00\u20134.00)**" in ours  # time to train: median (min\u2013max), a win
    assert "6.00 (5.00\u20139.00)" in npy  # 0 workers: the faster count
    assert "| 0 | 3 |" in npy
    assert "**" not in npy
    assert "200 (100\u2013300)" in ours  # first epoch: a tie, not bold
    assert "**200" not in ours
    assert ours.endswith("| 60.0 |")  # disk: the copy and what the loader built, all alike
    assert "load average (1 min) at the start of each row: 0.50\u20132.50" in text
    assert "worker counts tried" in text


def test_report_reads_and_segmentation_tables(tmp_path):
    def rec(engine: str, metrics: dict) -> dict:
        row = {"suite": "reads", "kind": "reads", "engine": engine, "per": 4, "workers": 0,
               "n": 24, "shape": [240, 240, 155], "patch": 64, "epochs": 10}  # fmt: skip
        machine = {"describe": "box: cpu, 2 cores", "loadavg_1m": 1.0}
        return {"key": f"reads/{engine}", "row": row, "settings": {}, "machine": machine,
                "metrics": metrics}  # fmt: skip

    lines = [rec("radiobject", {"roi_ms": x, "volume_ms": 10.0, "axial_ms": 1.0}) for x in (1, 3)]
    lines += [rec("zarr", {"roi_ms": 2.0, "volume_ms": 5.0, "axial_ms": 4.0})]
    lines += [rec("seg-radiobject", {"seg_setup_ms": x}) for x in (30.0, 20.0, 40.0)]
    lines += [rec("seg-scan", {"seg_setup_ms": 300.0})]
    sizes = {"radiobject": 27.0, "nii-gz": 36.0, "nii": 409.0, "npy": 409.0, "b2-nnunet": 30.0,
             "b2-nnunet-f32": 80.0, "b2-lz4hc": 40.0, "zarr3": 41.0}  # fmt: skip
    lines += [rec("disk", {"disk_mb": sizes})]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    text = report.render(report.load(tmp_path))
    ours = next(x for x in text.splitlines() if x.startswith("| radiobject, default tiles"))
    assert "| 2 | 2.00 (1.00\u20133.00) | 10.0 | **1.00** |" in ours  # only the axial win bold
    seg = next(x for x in text.splitlines() if x.startswith("| radiobject `create_segm"))
    assert seg.endswith("| 3 | **30.0 (20.0\u201340.0)** |")
    disk = next(x for x in text.splitlines() if x.startswith("| radiobject (TileDB"))
    assert disk.endswith("| **27.0** | 0.75x |")
    assert "| `.npy` | 409 | 11.36x |" in text


def test_report_compares_the_loader_with_its_own_patch_loop(tmp_path):
    lines = (_fake("radiobject", [4.0, 2.0, 5.0]) + _fake("radiobject", [8.0, 8.0, 8.0], workers=2)
             + _fake("radiobject-loop", [2.0, 2.0, 2.0]))  # fmt: skip
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    text = report.render(report.load(tmp_path)).splitlines()
    start = next(i for i, x in enumerate(text) if "against its own patch loop" in x)
    table = text[start + 2 :]
    # steady samples/s: 1000 / train_s; the ratio of the medians, the repeats' pairs in brackets
    assert table[2] == "| 0 | 250 (200\u2013500) | 500 | 0.50x (0.40\u20131.00) |"
    assert table[3] == "| 2 | 125 | 500 | 0.25x (0.25\u20130.25) |"
