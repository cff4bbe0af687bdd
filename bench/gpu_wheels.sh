#!/usr/bin/env bash
# Download, into .whl/ (git-ignored), wheels for Python 3.12 / manylinux x86-64 of the packages mmgpt needs that the
# GPU machine lacks (it has torch, Lightning, torchmetrics, numpy, pyyaml, rich, tensorboard, matplotlib, pytest...
# but not hydra-core, omegaconf, antlr4, wandb, soundfile, webdataset, submitit), with their own missing
# dependencies, one version each. bench/gpu.sh installs them from .whl/ when present. Run where pip reaches PyPI:
#   bash bench/gpu_wheels.sh            (PYTHON=... to choose the interpreter whose pip downloads)
# Top-level versions are those installed in .venv (so the GPU run uses what CI tests) when it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
mkdir -p .whl
"$PY" - <<'PYEOF'
import importlib.metadata as md
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

WANTED = ["hydra-core", "omegaconf", "antlr4-python3-runtime", "hydra-submitit-launcher", "submitit", "wandb",
          "soundfile", "webdataset"]
# On the GPU image already (device notes, KINDS.md, 2026-11-17): never carried, never shadowed.
PRESENT = set("""absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cycler cython diffrax einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet
httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig jax jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities lxml markdown markdown-it-py markupsafe matplotlib mdurl
ml-dtypes mpmath msgpack multidict networkx ninja numba numpy onnx opencv-python-headless optax packaging pandas
pathspec peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 pygments
pyparsing pytest pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich
safetensors scikit-image scikit-learn scipy seaborn sentencepiece setuptools six sympy tabulate tensorboard
tensorboard-data-server threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchmetrics
torchvision tqdm transformers triton typer typing-extensions urllib3 werkzeug wheel wrapt xxhash yarl zipp""".split())
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_35_x86_64"]
ENV = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython", "extra": ""}
out = Path(".whl")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def have(name: str) -> Path | None:
    key = norm(name).replace("-", "_")
    return next((p for p in out.glob("*.whl") if norm(p.name.split("-")[0]).replace("-", "_") == key), None)


def fetch(spec: str) -> Path:
    name = norm(Requirement(spec).name)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(out), spec]
    if subprocess.run(cmd).returncode != 0:  # pure-Python sdist only (antlr4-python3-runtime): build the wheel
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), spec], check=True)
    found = have(name)
    if found is None:
        sys.exit(f"no wheel for {spec}")
    print(f"  {found.name}")
    return found


def requires(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = [Requirement(l.split(":", 1)[1].strip()) for l in lines if l.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(ENV)]


queue: list[str] = []
for name in WANTED:
    try:
        queue.append(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        queue.append(name)
seen: set[str] = set()
while queue:
    spec = queue.pop(0)
    name = norm(Requirement(spec).name)
    if name in seen or name in PRESENT:
        continue
    seen.add(name)
    wheel = have(name) or fetch(spec)
    queue += [str(r) for r in requires(wheel) if norm(r.name) not in PRESENT | seen]
total = sum(p.stat().st_size for p in out.glob("*.whl"))
print(f"{len(list(out.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB in {out}/ (the device's working tree limit is 64 MiB)")
PYEOF
