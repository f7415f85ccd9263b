"""create_distributed_dataloader with two real processes on the gloo backend."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch.distributed
import torch.multiprocessing

from radiobject.ml import create_distributed_dataloader

pytestmark = pytest.mark.slow


@pytest.fixture
def helpers(monkeypatch):
    """tests/_ml_helpers.py, importable by name in the spawned ranks too."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    return importlib.import_module("_ml_helpers")


def test_ranks_without_a_process_group(sample_radi):
    """Sharding needs no process group: rank and world size are explicit."""
    shards = []
    for rank in range(3):
        loader = create_distributed_dataloader(sample_radi.T1w, rank, 3, batch_size=1)
        shards.append([b["obs_id"][0] for b in loader])
    assert [len(s) for s in shards] == [2, 2, 2]
    assert sorted(obs for shard in shards for obs in shard) == sample_radi.T1w.obs_ids


@pytest.mark.timeout(120)
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")
def test_two_gloo_ranks_see_disjoint_shards_that_cover_the_dataset(sample_radi, helpers, tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    torch.multiprocessing.spawn(
        helpers.distributed_worker,
        args=(2, init, sample_radi.uri, str(tmp_path)),
        nprocs=2,
        join=True,
    )
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    everything = set(sample_radi.T1w.obs_ids)
    for epoch in ("0", "1"):
        ids = [{obs for obs, _ in rank[epoch]} for rank in seen]
        assert [len(rank[epoch]) for rank in seen] == [3, 3]
        assert ids[0].isdisjoint(ids[1])
        assert ids[0] | ids[1] == everything
    # set_epoch reshuffles the shards and redraws the patches
    order = [[obs for rank in seen for obs, _ in rank[e]] for e in ("0", "1")]
    assert order[0] != order[1]
    starts = [{obs: tuple(s) for rank in seen for obs, s in rank[e]} for e in ("0", "1")]
    assert starts[0] != starts[1]
