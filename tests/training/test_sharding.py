"""mmgpt's FSDP2 wrapping with torch alone, on 2 CPU processes (gloo), for every fusion.

Each rank trains its half of a batch through :func:`mmgpt.training.distributed.shard_module` (classification +
captioning loss, so the decoder's tied embeddings and the cross-attention gates are in it), clips the sharded
gradients to a total norm with :func:`~mmgpt.training.distributed.clip_grad_norm_`, and steps SGD; after three
steps the gathered parameters equal those of one unsharded network trained on the whole batches.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mmgpt.batch import MultimodalBatch
from mmgpt.layers import Block
from mmgpt.objectives import Classification
from mmgpt.objectives.lm import CausalLM
from mmgpt.training.distributed import clip_grad_norm_, shard_module
from tests.conftest import make_batch
from tests.helpers.tiny import FUSIONS, tiny_net

STEPS, BATCH, MAX_NORM, LR = 3, 4, 0.05, 0.5
#: Reduce-scatter sums the two halves' gradients in another order than one backward over the whole batch.
ATOL, RTOL = 2e-5, 1e-4


class Trainee(nn.Module):
    """A network and its two losses, run through ``loss`` (registered with FSDP as a forward method)."""

    def __init__(self, fusion: str) -> None:
        super().__init__()
        self.net = tiny_net(fusion)
        self.classify = Classification(5)
        self.lm = CausalLM(max_length=48)

    def loss(self, batch: MultimodalBatch) -> torch.Tensor:
        return self.classify(self.net, batch).loss + self.lm(self.net, batch).loss


def _batches() -> list[MultimodalBatch]:
    out = []
    for step in range(STEPS):
        b = make_batch(batch_size=BATCH, seed=step)
        # equal caption lengths: each half's mean token loss, averaged over the ranks, is the whole batch's mean
        out.append(replace(b, captions=[f"{i % 3} red {'abc'[i % 3]}" for i in range(BATCH)]))
    return out


def _half(b: MultimodalBatch, rank: int) -> MultimodalBatch:
    s = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    return replace(b, inputs={k: v[s] for k, v in b.inputs.items()}, masks={k: v[s] for k, v in b.masks.items()},
                   present={k: v[s] for k, v in b.present.items()}, labels=b.labels[s], ids=b.ids[s],
                   captions=b.captions[s])


def _train(model: Trainee, batches: list[MultimodalBatch], rank: int | None) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    norms = []
    for b in batches:
        opt.zero_grad()
        model.loss(b if rank is None else _half(b, rank)).backward()
        if rank is None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)))
        else:
            norms.append(float(clip_grad_norm_(model.parameters(), MAX_NORM)))
        opt.step()
    return norms


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results = {}
        for fusion in FUSIONS:
            torch.manual_seed(0)
            model = Trainee(fusion)
            blocks = sum(isinstance(m, Block) for m in model.modules())
            units = shard_module(model, forward_methods=("loss",))
            from torch.distributed.tensor import DTensor

            assert units == blocks and all(isinstance(p, DTensor) for p in model.parameters())
            norms = _train(model, _batches(), rank)
            full = {k: v.full_tensor() for k, v in model.state_dict().items() if isinstance(v, DTensor)}
            results[fusion] = {"norms": norms, "params": full}
        if rank == 0:
            torch.save(results, Path(out_dir) / "sharded.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_training_with_clipping_equals_unsharded_for_every_fusion(tmp_path):
    init_file = tempfile.mktemp(dir=tmp_path)
    mp.start_processes(_worker, args=(init_file, str(tmp_path)), nprocs=2, start_method="spawn", join=True)
    sharded = torch.load(tmp_path / "sharded.pt", weights_only=True)
    for fusion in FUSIONS:
        torch.manual_seed(0)
        model = Trainee(fusion)
        norms = _train(model, _batches(), None)
        assert min(norms) > 2 * MAX_NORM, norms  # clipping acts on every step, so a dropped clip would show
        assert sharded[fusion]["norms"] == pytest.approx(norms, rel=1e-4)
        reference = model.state_dict()
        assert set(sharded[fusion]["params"]) == set(reference) - {k for k, _ in model.named_buffers()}
        for k, v in sharded[fusion]["params"].items():
            torch.testing.assert_close(v, reference[k], atol=ATOL, rtol=RTOL, msg=f"{fusion}: {k}")
