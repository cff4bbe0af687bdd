"""Compute cost of a network: FLOPs per sample (forward and training step), parameters, peak tensor memory of a
training step, latency and training throughput (measured interleaved across networks).

This is the measuring side of ``mmgpt-compare``'s cost step (:func:`mmgpt.cli.compare_cost.measure_costs` builds
the networks and writes ``cost.json``; ``compare.match`` sizes networks with :func:`count_flops`). The report
(:mod:`mmgpt.report`) only reads ``cost.json``: it is built from run directories alone.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode`. In the torch versions used here it knows
the CUDA attention kernels but counts 0 for the CPU one (``_scaled_dot_product_flash_attention_for_cpu``), which
every attention call in mmgpt uses on CPU; :data:`CPU_ATTENTION_FLOPS` registers the same formula for it
(``2 * B * H * L * S * (E + Ev)`` forward: Q K^T and the weighted sum of V; backward is twice that), so CPU and
GPU counts agree. A multiply-add counts as 2 FLOPs, as torch counts matmuls.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from mmgpt.batch import MultimodalBatch


def _cpu_attention_forward(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None,
                            **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


#: The CPU attention kernels and their FLOP formulas (the ones torch registers for its CUDA kernels).
CPU_ATTENTION_FLOPS: dict[Any, Callable[..., int]] = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_forward,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs of running ``fn()`` (attention on CPU included)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        fn()
    return int(counter.get_total_flops())


@dataclass
class Cost:
    """Attributes:
    params: parameters of the network.
    forward_flops: FLOPs of one forward pass per sample.
    train_step_flops: FLOPs of forward + backward per sample (optimizer update excluded).
    """

    params: int
    forward_flops: float
    train_step_flops: float


def network_cost(net: nn.Module, batch: MultimodalBatch, loss: Callable[[Any, MultimodalBatch], Tensor]) -> Cost:
    """FLOPs per sample of ``net`` on ``batch`` (forward, and forward + backward of ``loss(net(batch), batch)``)."""
    was_training = net.training
    net.eval()
    # counted with autograd on (nothing is backpropagated): under no_grad, views of parameters (the resampler's
    # expanded queries) require grad without a grad_fn, which FlopCounterMode's module tracker cannot hook
    forward = count_flops(lambda: net(batch))
    net.train(was_training)

    def step() -> None:
        loss(net(batch), batch).backward()

    train = count_flops(step)
    net.zero_grad(set_to_none=True)
    n = batch.batch_size
    return Cost(params=sum(p.numel() for p in net.parameters()), forward_flops=forward / n, train_step_flops=train / n)


class _LiveTensors(TorchDispatchMode):
    """Tracks the bytes of tensor storages alive while it is active: every op's outputs are added once; a storage
    leaves the count when it is freed (checked lazily, whenever the count could be a new peak, so the peak is
    exact). Storages registered beforehand (parameters, inputs) count from the start."""

    def __init__(self, existing: Iterable[Tensor] = ()) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.bound = 0  # live bytes plus bytes freed since the last sweep: an upper bound
        self.peak = 0
        for t in existing:
            self._add(t)
        self._sweep()

    def _add(self, t: Tensor) -> None:
        if t.is_sparse or t.device.type == "meta":
            return
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self.live and not self.live[key][0].expired():
            return  # a view, or an op that returned its input
        nbytes = storage.nbytes()
        self.live[key] = (StorageWeakRef(storage), nbytes)
        self.bound += nbytes
        if self.bound > self.peak:
            self._sweep()

    def _sweep(self) -> None:
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        self.bound = sum(n for _, n in self.live.values())
        self.peak = max(self.peak, self.bound)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                self._add(t)
        return out


def peak_tensor_bytes(fn: Callable[[], Any], existing: Iterable[Tensor] = ()) -> int:
    """Peak bytes of live tensors while ``fn()`` runs: ``existing`` (parameters, inputs) plus everything it
    allocates (activations, gradients, temporaries), freed tensors leaving the count.

    On CUDA the allocator's own peak (``torch.cuda.max_memory_allocated``) is the same quantity and cheaper:
    :func:`step_memory` uses it there. This is the CPU counterpart (process RSS would include the Python heap,
    libraries and allocator caches).
    """
    tracker = _LiveTensors(existing)
    with tracker:
        fn()
    tracker._sweep()
    return tracker.peak


def step_memory(net: nn.Module, batch: MultimodalBatch, loss: Callable[[Any, MultimodalBatch], Tensor]) -> int:
    """Peak tensor bytes of one training step (forward + backward, parameters, gradients and the batch included)."""
    net.train()
    net.zero_grad(set_to_none=True)

    def step() -> None:
        loss(net(batch), batch).backward()

    if batch.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        tensors = [*net.parameters(), *net.buffers(), *batch.inputs.values(), *batch.masks.values(),
                   *batch.present.values(), *([batch.labels] if batch.labels is not None else [])]
        peak = peak_tensor_bytes(step, tensors)
    net.zero_grad(set_to_none=True)
    return int(peak)


def first_samples(batch: MultimodalBatch, n: int) -> MultimodalBatch:
    """The first ``n`` samples of ``batch``."""
    def cut(d: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v[:n] for k, v in d.items()}

    return replace(batch, inputs=cut(batch.inputs), masks=cut(batch.masks), present=cut(batch.present),
                   labels=None if batch.labels is None else batch.labels[:n], ids=list(batch.ids[:n]),
                   captions=None if batch.captions is None else batch.captions[:n])


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


@dataclass
class Speed:
    """Medians over interleaved rounds. Attributes:
    latency_b1_ms: one forward pass (eval mode, no grad) of a single sample.
    latency_batch_ms: one forward pass of a batch of ``large_batch`` samples (64 by default).
    train_samples_per_sec: training steps (forward, backward, AdamW step) on batches of ``large_batch``.
    """

    latency_b1_ms: float
    latency_batch_ms: float
    train_samples_per_sec: float


def interleaved_speed(nets: dict[str, nn.Module], batch: MultimodalBatch,
                      loss: Callable[[Any, MultimodalBatch], Tensor], rounds: int = 5, large_batch: int = 64,
                      optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None) -> dict[str, Speed]:
    """Latency at batch 1 and ``large_batch`` and training throughput of every network, measured in rounds
    that visit every network in turn (after one warm-up round), so that a change of machine load during the
    measurement affects all of them alike; medians over the rounds."""
    if batch.batch_size < large_batch:
        raise ValueError(f"the batch has {batch.batch_size} samples; latency at batch {large_batch} needs as many")
    one, big = first_samples(batch, 1), first_samples(batch, large_batch)
    batch = big
    make_opt = optimizer or (lambda net: torch.optim.AdamW(net.parameters(), lr=1e-4))
    opts = {name: make_opt(net) for name, net in nets.items()}
    times: dict[str, dict[str, list[float]]] = {name: {"b1": [], "b64": [], "train": []} for name in nets}

    def infer(net: nn.Module, b: MultimodalBatch) -> Callable[[], Any]:
        def run() -> None:
            with torch.no_grad():
                net(b)
        return run

    def train_step(net: nn.Module, opt: torch.optim.Optimizer) -> Callable[[], Any]:
        def run() -> None:
            loss(net(batch), batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    for r in range(rounds + 1):  # round 0 warms up (allocator, lazy init, optimizer state)
        for name, net in nets.items():
            net.eval()
            b1, b64 = _timed(infer(net, one), batch.device), _timed(infer(net, big), batch.device)
            net.train()
            step = _timed(train_step(net, opts[name]), batch.device)
            if r:
                times[name]["b1"].append(b1)
                times[name]["b64"].append(b64)
                times[name]["train"].append(step)
    return {name: Speed(latency_b1_ms=1e3 * statistics.median(t["b1"]),
                        latency_batch_ms=1e3 * statistics.median(t["b64"]),
                        train_samples_per_sec=batch.batch_size / statistics.median(t["train"]))
            for name, t in times.items()}
