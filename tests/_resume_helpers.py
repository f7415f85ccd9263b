"""Training loops the resume tests run in subprocesses and spawned ranks.

A loop logs every batch it gets (sample keys, SHA-256 of the image bytes, whole batch and per
sample) to a JSON-lines file and, after every step, writes a checkpoint (the loader's
``state_dict`` and the step) the way a trainer saves one with its model. It can kill itself
with SIGKILL right after a checkpoint, like a pre-empted job. Workers import this module to
unpickle the transform, so it lives here (tests put this folder on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import radiobject
from radiobject.ml import (
    RadiObjectLoader,
    create_distributed_dataloader,
    create_segmentation_dataloader,
    create_training_dataloader,
)

SEED = 11
PATCH = (8, 8, 8)


def jitter(sample: dict[str, Any]) -> dict[str, Any]:
    """A plain callable's augmentation: draws from the sample's own torch generator."""
    from radiobject.ml import sample_generator

    image = torch.as_tensor(sample["image"])
    sample["image"] = image + 0.01 * torch.rand(image.shape, generator=sample_generator())
    return sample


class FlipNoise:
    """A random flip and noise with a generator of its own, reseeded like MONAI's transforms.

    ``set_random_state`` is MONAI's ``Randomizable`` protocol; the generator is pickled into
    every worker with the transform, as a MONAI transform's is. It keeps the subprocesses of
    the tests free of MONAI's import, which takes seconds.
    """

    def __init__(self) -> None:
        self.R = np.random.RandomState()

    def set_random_state(self, seed: int | None = None) -> FlipNoise:
        self.R = np.random.RandomState(seed)
        return self

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = torch.as_tensor(sample["image"])
        if self.R.rand() < 0.5:
            image = image.flip(1)
        noise = self.R.normal(0.0, 0.1, size=tuple(image.shape)).astype(np.float32)
        sample["image"] = image + torch.from_numpy(noise)
        return jitter(sample)


def make_transform(use_monai: bool = True) -> Any:
    """Random MONAI transforms (their own generators) and ``jitter`` (the sample's generator);
    without ``use_monai``, :class:`FlipNoise` does the same."""
    if not use_monai:
        return FlipNoise()
    from monai.transforms import Compose, RandFlipd, RandGaussianNoised

    return Compose(
        [
            RandFlipd(keys=["image"], prob=0.5, spatial_axis=[0, 1, 2]),
            RandGaussianNoised(keys=["image"], prob=1.0, std=0.1),
            jitter,
        ]
    )


def make_loader(
    radi_uri: str,
    kind: str,
    *,
    num_workers: int = 0,
    batch_size: int = 2,
    rank: int = 0,
    world_size: int = 1,
    use_monai: bool = True,
) -> RadiObjectLoader:
    """The loader of one test run: 4 volumes x 2 patches = 8 items an epoch."""
    radi = radiobject.RadiObject(radi_uri)
    common: dict[str, Any] = {
        "batch_size": batch_size,
        "patch_size": PATCH,
        "patches_per_volume": 2,
        "num_workers": num_workers,
        "seed": SEED,
    }
    if kind == "training":
        return create_training_dataloader(radi.T1w, transform=make_transform(use_monai), **common)
    if kind == "segmentation":
        return create_segmentation_dataloader(radi.T1w, radi.seg, **common)
    if kind == "distributed":
        return create_distributed_dataloader(
            radi.T1w, rank, world_size, transform=make_transform(use_monai), **common
        )
    raise ValueError(f"unknown loader kind {kind!r}")


def digest(tensor: Any) -> str:
    """SHA-256 of a tensor's bytes (MONAI MetaTensors as plain tensors)."""
    plain = tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor
    return hashlib.sha256(plain.contiguous().numpy().tobytes()).hexdigest()


def batch_record(batch: dict[str, Any]) -> dict[str, Any]:
    """What a batch was: its samples' keys (volume, patch corner) and bytes."""
    keys = [
        [obs_id, start.tolist()]
        for obs_id, start in zip(batch["obs_id"], batch["patch_start"], strict=True)
    ]
    return {
        "keys": keys,
        "batch_sha": digest(batch["image"]),
        "sample_sha": [digest(image) for image in batch["image"]],
    }


def write_json(path: str | Path, value: Any) -> None:
    """Write atomically: a kill never leaves half a checkpoint."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def train(
    loader: RadiObjectLoader,
    *,
    epochs: int,
    log: str | Path,
    checkpoint: str | Path | None = None,
    resume: dict[str, Any] | None = None,
    stop_after: int | None = None,
    kill: bool = False,
    set_epoch: bool = False,
) -> None:
    """A training loop: log each batch, checkpoint after each step, stop or die at a step."""
    first_epoch, step = 0, 0
    if resume is not None:
        loader.load_state_dict(resume["loader"])
        first_epoch, step = resume["epoch"], resume["step"]
    with open(log, "a") as out:
        for epoch in range(first_epoch, epochs):
            if set_epoch:
                loader.set_epoch(epoch)
            for batch in loader:
                step += 1
                out.write(json.dumps({"epoch": epoch, "step": step, **batch_record(batch)}) + "\n")
                out.flush()
                if checkpoint is not None:
                    state = {"loader": loader.state_dict(), "epoch": epoch, "step": step}
                    write_json(checkpoint, state)
                if step == stop_after:
                    if kill:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return


def main(argv: list[str]) -> None:
    """``python _resume_helpers.py '<json>'``: one run, as described by the JSON argument."""
    args = json.loads(argv[0])
    loader = make_loader(
        args["radi"],
        args["kind"],
        num_workers=args.get("num_workers", 0),
        batch_size=args.get("batch_size", 2),
        world_size=args.get("world_size", 1),
        use_monai=False,
    )
    resume = json.loads(Path(args["resume"]).read_text()) if args.get("resume") else None
    train(
        loader,
        epochs=args["epochs"],
        log=args["log"],
        checkpoint=args.get("checkpoint"),
        resume=resume,
        stop_after=args.get("stop_after"),
        kill=args.get("kill", False),
        set_epoch=args.get("set_epoch", False),
    )


def distributed_resume(
    rank: int, world_size: int, init_method: str, radi_uri: str, checkpoint: str, out_dir: str
) -> None:
    """One rank of a run resumed from another run's checkpoint, logging to ``out_dir``."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        loader = make_loader(
            radi_uri, "distributed", rank=rank, world_size=world_size, use_monai=False
        )
        resume = json.loads(Path(checkpoint).read_text())
        log = Path(out_dir, f"rank{rank}.jsonl")
        train(loader, epochs=2, log=log, resume=resume, set_epoch=True)
        dist.barrier()  # all ranks finish loading before any leaves the group
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
