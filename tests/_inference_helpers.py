"""Shared by tests/test_ml_inference.py and the ranks it spawns (importable by name)."""

from __future__ import annotations

from pathlib import Path

import torch

N_CLASSES = 4


def tiny_model(in_channels: int = 1) -> torch.nn.Module:
    """A Conv3d with fixed weights (seeded), softmax over 4 classes."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(in_channels, N_CLASSES, kernel_size=3, padding=1)
    return torch.nn.Sequential(conv, torch.nn.Softmax(dim=1)).eval()


def inference_rank(rank: int, world_size: int, init_method: str, radi_uri: str, out: str) -> None:
    """One DDP rank: predict its shard of ``radi.T1w`` into ``radi`` as ``pred``."""
    import torch.distributed as dist

    import radiobject
    from radiobject.ml import PredictionWriter, create_inference_dataloader

    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        radi = radiobject.RadiObject(radi_uri)
        loader = create_inference_dataloader(
            radi.T1w, patch_size=16, overlap=0.5, batch_size=3, distributed=True
        )
        seen = sorted({str(o) for b in loader for o in b["obs_id"]})
        writer = PredictionWriter(loader, radi, "pred", output="probabilities", mode="gaussian")
        coll = writer.run(tiny_model())
        Path(out, f"rank{rank}.txt").write_text("\n".join([str(len(coll)), *seen]))
    finally:
        dist.destroy_process_group()
