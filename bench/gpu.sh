#!/usr/bin/env bash
# THE prepared script for every GPU figure mmgpt wants, in time-boxed sections (under 5 min in all). Each section
# writes its results under $OUT as soon as it finishes, so a run cut short keeps what was done:
#   summary.txt              one line per section: ok / skipped (why) / failed (exit code)
#   env.txt                  nvidia-smi, torch, CUDA, Lightning versions
#   test_gpu.log             `pytest -m gpu`: DDP, bf16, SDPA backends, torch.compile, FSDP2, no-sync step, memory
#   backbone_tuning.log      BERT-base-sized backbone (tests/gpu/test_backbone_tuning.py): peak GiB frozen / LoRA /
#                            LoRA + activation checkpointing, frozen weights bit-identical, trainer=fsdp per layer
#   gpu_step.{json,md}       bf16 step time, tokens/s, MFU per fusion at dim 768 / 12 layers (bench/gpu_step.py)
#   lightning_overhead.{json,md}   Lightning / plain-PyTorch step time ratio (bench/lightning_overhead.py)
#   feature_cache.{json,md}  epoch time with vs without the frozen-feature cache, ViT-B + BERT-base (bench/feature_cache.py)
# Without CUDA (CI's dry run, `make gpu-dry-run`) the GPU sections are skipped and gpu_step runs at tiny shapes
# on the CPU, so the script is known to start. Python packages missing on the GPU machine travel as wheels in
# .whl/ (bench/gpu_wheels.sh fetches them) and are installed into /tmp/site when present.
#   OUT=dir bash bench/gpu.sh        (default OUT: bench/results/gpu; PYTHON defaults to python3)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results/gpu}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
: >"$OUT/summary.txt"
export PYTHONUNBUFFERED=1 CI=1 WANDB_MODE=offline MMGPT_LOG_DIR="${MMGPT_LOG_DIR:-/tmp/mmgpt-gpu-logs}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
failed=0

note() { echo "$1: $2" | tee -a "$OUT/summary.txt"; }
# section NAME SECONDS COMMAND...: run with a time limit, record ok / failed / timed out
section() {
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS rc=0
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" || rc=$?
    if [ "$rc" -eq 0 ]; then note "$name" "ok ($((SECONDS - t0)) s)"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then note "$name" "timed out after ${limit} s"; failed=1
    else note "$name" "failed (exit $rc, $((SECONDS - t0)) s)"; failed=1; fi
}

# 1. wheels (hydra-core, omegaconf, wandb, soundfile, webdataset, submitit...) when carried
if "$PY" -c 'import hydra, omegaconf, soundfile, webdataset' 2>/dev/null; then
    note wheels "skipped (hydra-core, omegaconf, soundfile, webdataset already importable)"
elif compgen -G ".whl/*.whl" >/dev/null; then
    section wheels 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
else
    note wheels "skipped (no .whl/*.whl: bench/gpu_wheels.sh fetches them where pip reaches PyPI)"
fi

# 2. environment (one interpreter start: each costs seconds)
{ nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$PY" -c 'import torch, pytorch_lightning as pl; print("torch", torch.__version__, "cuda", torch.version.cuda,
"devices", torch.cuda.device_count(), "lightning", pl.__version__); print("cuda_available", int(torch.cuda.is_available()))'
} >"$OUT/env.txt" 2>&1
CUDA=$(sed -n 's/^cuda_available \([01]\)$/\1/p' "$OUT/env.txt")
CUDA=${CUDA:-0}
note env "cuda=$CUDA ($(grep '^torch ' "$OUT/env.txt" || echo 'torch did not import'))"

# 3. the GPU test suite (tests marked gpu)
if [ "$CUDA" = 1 ]; then
    section test-gpu 110 bash -c "'$PY' -m pytest -q -m gpu -p no:cacheprovider --timeout 100 tests/gpu \
        --ignore=tests/gpu/test_backbone_tuning.py >'$OUT/test_gpu.log' 2>&1"
    section backbone-tuning 100 bash -c "'$PY' -m pytest -q -s -m gpu -p no:cacheprovider --timeout 90 \
        tests/gpu/test_backbone_tuning.py >'$OUT/backbone_tuning.log' 2>&1"
else
    note test-gpu "skipped (no CUDA)"
    note backbone-tuning "skipped (no CUDA)"
fi

# 4. bf16 step time, tokens/s and MFU per fusion at dim 768 / 12 layers (tiny shapes on CPU: a smoke check)
if [ "$CUDA" = 1 ]; then
    section gpu-step 90 "$PY" -m bench.gpu_step --out "$OUT"
else
    section gpu-step-smoke 120 "$PY" -m bench.gpu_step --out "$OUT" --smoke --fusions early
fi

# 5. configured (Lightning) / plain step ratio
if [ "$CUDA" = 1 ]; then
    section lightning-overhead 45 bash -c "'$PY' -m bench.lightning_overhead --steps 30 --rounds 3 && \
        cp bench/results/lightning_overhead.json bench/results/lightning_overhead.md '$OUT/'"
else
    note lightning-overhead "skipped (no CUDA)"
fi

# 6. cached vs uncached epochs of a fusion on frozen ViT-Base + BERT-base (datamodules/feature_cache/)
if [ "$CUDA" = 1 ] && "$PY" -c "import transformers" 2>/dev/null; then
    section backbone-cache 150 bash -c "'$PY' -m bench.feature_cache --device cuda --num-train 512 \
        --batch-size 64 --rounds 3 --threads 8 && cp bench/results/feature_cache.json bench/results/feature_cache.md '$OUT/'"
else
    note backbone-cache "skipped (no CUDA or no transformers)"
fi

echo "results in $OUT"
exit $failed
