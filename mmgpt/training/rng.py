"""Random-number-generator state: captured into checkpoints, restored on resume, and forked for data randomness.

A run that resumes from a checkpoint only continues exactly where it stopped if every random draw after the
restore point is the one the uninterrupted run would have made. Two kinds of randomness take part:

- the training process's own draws (dropout, objectives' masking, adversarial starts): :func:`rng_states` /
  :func:`set_rng_states` capture and restore the global torch (CPU and CUDA), Python and NumPy generators;
- data randomness (augmentation, modality dropout), which runs in loader workers or ahead of the model (prefetch):
  :func:`seeded` makes it a pure function of a per-sample seed (see :func:`mix_seed`) without touching the
  training process's generators, so it no longer depends on the number of workers or on where a run resumed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """A well-mixed 64-bit seed from integers such as (run seed, epoch, sample index); the same parts, the same seed.

    SplitMix64 over the parts in order: cheap enough to call once per sample.
    """
    h = 0
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h


def _splitmix64_array(x: np.ndarray) -> np.ndarray:
    """:func:`_splitmix64` of each element of a uint64 array (numpy's uint64 arithmetic wraps modulo 2**64)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def mix_seeds(*parts: int, last: Sequence[int] | np.ndarray) -> list[int]:
    """``[mix_seed(*parts, i) for i in last]``, computed for the whole sequence at once (an epoch's sample seeds)."""
    h = np.uint64(mix_seed(*parts))
    values = np.asarray(last, dtype=np.int64).astype(np.uint64)  # two's complement, as int(p) & _MASK64
    with np.errstate(over="ignore"):
        return _splitmix64_array(h ^ values).tolist()


def seed_all(seed: int) -> None:
    """Seed the global torch CPU, Python and NumPy generators (not CUDA's: data randomness runs on the CPU)."""
    seed = int(seed) & _MASK64
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the global torch CPU, Python and NumPy generator states after the block, whatever it drew."""
    cpu, py, npy = torch.get_rng_state(), random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        random.setstate(py)
        np.random.set_state(npy)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with the global torch CPU, Python and NumPy generators seeded to ``seed``; restore them after.

    Code inside (e.g. torchvision's random transforms, which draw from the global generator) gets the same draws
    for the same seed wherever it runs, and the caller's generators are left exactly as they were.
    """
    with preserved_rng():
        seed_all(seed)
        yield


def rng_states() -> dict[str, Any]:
    """This process's global generator states, in types that ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` captured (CUDA states only where CUDA is in use with as many devices)."""
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
