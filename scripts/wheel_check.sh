#!/usr/bin/env bash
# Build the wheel, install it apart from the checkout (a target directory put on the path in place of the checkout,
# so the heavy dependencies of .venv need not install twice), and from an unrelated directory run
# `mmgpt-train debug=fdr` and `mmgpt-eval` on its checkpoint. Proves a wheel carries its configs and datamodules.
#   usage: scripts/wheel_check.sh [PYTHON]      (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"   # absolute, not resolved: keep the venv
WORK="$(mktemp -d /tmp/mmgpt-wheel-check.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip wheel --no-deps -q -w "$WORK/dist" . 2>&1 | grep -v "WARNING: Location" || true
WHEEL="$(ls "$WORK"/dist/mmgpt_fusion-*.whl)"  # the distribution mmgpt-fusion (mmgpt on PyPI is another project)
"$PY" -c "import sys, zipfile; print(*zipfile.ZipFile(sys.argv[1]).namelist(), sep=chr(10))" "$WHEEL" \
  > "$WORK/contents.txt"   # listed once: `grep -q` in a pipe would SIGPIPE the lister under pipefail
for f in mmgpt/conf/train.yaml mmgpt/conf/eval.yaml mmgpt/conf/model/default.yaml mmgpt/datamodules/synthetic/generator.py; do
  grep -qx "$f" "$WORK/contents.txt" || { echo "wheel-check: $f missing from $WHEEL"; exit 1; }
done
if grep -qE '^(datamodules|conf)/' "$WORK/contents.txt"; then
  echo "wheel-check: the wheel installs a top-level 'datamodules' or 'conf' folder"; exit 1
fi
"$PY" -m pip install --no-deps --no-compile -q --disable-pip-version-check --root-user-action=ignore --target "$WORK/site" "$WHEEL" 2>&1 | grep -v "WARNING: Location" || true
export PYTHONPATH="$WORK/site"
mkdir -p "$WORK/elsewhere" && cd "$WORK/elsewhere"   # an unrelated directory: no conf/, no checkout
where="$("$PY" -c 'import mmgpt; print(mmgpt.__file__)')"
case "$where" in "$WORK/site/"*) ;; *) echo "wheel-check: mmgpt imported from $where, not the wheel"; exit 1;; esac
run() { "$PY" "$WORK/site/bin/$1" "${@:2}"; }
run mmgpt-train debug=fdr hydra.run.dir="$WORK/elsewhere/fdr"          # one batch of each stage
run mmgpt-train experiment=smoke trainer.max_epochs=1 logger=csv hydra.run.dir="$WORK/elsewhere/run"  # writes a checkpoint
ckpt="$(ls "$WORK"/elsewhere/run/checkpoints/*.ckpt | head -1)"
run mmgpt-eval ckpt_path="$ckpt" subsets=false hydra.run.dir="$WORK/elsewhere/eval"
test -s "$WORK/elsewhere/eval/eval_results.json"
echo "wheel-check: OK ($(basename "$WHEEL") installed apart from the checkout; mmgpt-train and mmgpt-eval ran from $PWD)"
