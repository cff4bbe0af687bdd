# mmgpt: `make demo` trains the default model on the embedded data set; `make test` runs the tests.
# Both create .venv (Python 3.10+) and install the project into it on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: demo test test-all test-slow test-gpu test-slurm slurm-up slurm-down gpu-dry-run gpu-wheels install train lint wheel-check clean help

help:
	@echo "make demo      create .venv, install, train the default model on the synthetic set (about 4 min on 2 CPUs, set-up included)"
	@echo "make test      create .venv, install, run the default test suite"
	@echo "make test-all  also run tests marked slow (132 tests, about 21 min more on 2 CPUs; SLURM tests: make test-slurm)"
	@echo "make test-slow only the tests marked slow (CI runs make test, then this)"
	@echo "make test-slurm  as root: bring up a one-node SLURM (scripts/slurm_up.sh), run the tests against it (long: requeues)"
	@echo "make test-gpu  the tests marked gpu (skipped without CUDA); bench/gpu.sh runs them and every GPU figure"
	@echo "make gpu-dry-run  bench/gpu.sh without CUDA: GPU sections skipped, the step benchmark at tiny shapes"
	@echo "make lint      ruff (configured in pyproject.toml)"
	@echo "make lock      rewrite constraints.txt (the tested dependency versions every install uses) after a dependency change"
	@echo "make wheel-check  build the wheel, install it apart from the checkout, run mmgpt-train and mmgpt-eval from it"
	@echo "make compare   early/late/cross-attention + unimodal baselines x 3 seeds, then report.md/report.csv/plots"
	@echo "make compare-all  every fusion family + baselines, TUNE=4 tuning trials each, then 3 seeds on each best"
	@echo "make bench     run the benchmark suite and rewrite BENCHMARKS.md"
	@echo "make bench-peers  mmgpt's fusions and MMSA's architectures in mmgpt vs MMSA's reference implementations (bench/peer_mmsa.py)"
	@echo "make export-synthetic OUT=dir   write the synthetic set as a manifest folder"
	@echo "make train ARGS='model/fusion=late trainer.max_epochs=3'   train with Hydra overrides"

DEV_STAMP := $(VENV)/.installed-dev
# The tested versions of every dependency (make lock writes it); `make install LOCK=` resolves afresh instead.
LOCK ?= constraints.txt
PIP_INSTALL = $(BIN)/python -m pip install --quiet --disable-pip-version-check $(if $(LOCK),-c $(LOCK))

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PIP_INSTALL) -e ".[dev]"
	touch $(DEV_STAMP)

# Rewrite constraints.txt from a fresh resolution of .[dev] in a scratch venv (after changing a dependency).
# boto3 is held to the botocore that aiobotocore (s3fs) accepts, or pip backtracks through every boto3 release.
.PHONY: lock
lock:
	rm -rf /tmp/mmgpt-lock && $(PYTHON) -m venv /tmp/mmgpt-lock
	/tmp/mmgpt-lock/bin/python -m pip install --quiet -e ".[dev]" \
	  "boto3$$(/tmp/mmgpt-lock/bin/python -m pip download --no-deps -q -d /tmp/mmgpt-lock/aio aiobotocore >/dev/null 2>&1; \
	    unzip -p /tmp/mmgpt-lock/aio/aiobotocore-*.whl '*/METADATA' | sed -n 's/^Requires-Dist: botocore//p' | head -1)"
	head -3 constraints.txt > /tmp/mmgpt-lock/head.txt
	{ cat /tmp/mmgpt-lock/head.txt; /tmp/mmgpt-lock/bin/python -m pip freeze --exclude-editable; } > constraints.txt
	/tmp/mmgpt-lock/bin/python -m pip check

install: $(DEV_STAMP)

demo: $(STAMP)
	$(BIN)/mmgpt-train $(ARGS)

train: $(STAMP)
	$(BIN)/mmgpt-train $(ARGS)

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

test-all: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -m "not gpu and not slurm" $(ARGS)

test-slow: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -m "slow and not gpu and not slurm" $(ARGS)

# A real one-node SLURM on this machine (Debian: apt-get install slurm-wlm munge slurmdbd mariadb-server; as root),
# left running afterwards: make slurm-down stops it.
test-slurm: $(DEV_STAMP) slurm-up
	$(BIN)/python -m pytest -q -m slurm tests/cli/test_slurm.py $(ARGS)

slurm-up:
	bash scripts/slurm_up.sh

slurm-down:
	bash scripts/slurm_down.sh

test-gpu: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -m gpu tests/gpu $(ARGS)

# bench/gpu.sh is THE script for every GPU figure (results under OUT); without CUDA it is a dry run.
GPU_OUT ?= /tmp/mmgpt-gpu-dry-run
gpu-dry-run: $(DEV_STAMP)
	OUT=$(GPU_OUT) PYTHON=$(BIN)/python bash bench/gpu.sh

# Wheels (Python 3.12, manylinux x86-64) of the packages the GPU machine lacks, into .whl/ (git-ignored).
gpu-wheels:
	bash bench/gpu_wheels.sh
lint: $(DEV_STAMP)  ## ruff, configured in pyproject.toml
	$(BIN)/ruff check mmgpt datamodules tests bench scripts

wheel-check: $(DEV_STAMP)  ## build the wheel, install it apart from the checkout, train + evaluate from another folder
	bash scripts/wheel_check.sh $(BIN)/python

clean:
	rm -rf logs .pytest_cache build

# `make export-synthetic OUT=dir`: write the embedded synthetic set as a manifest folder (PNG + WAV + JSON Lines),
# to show the format `mmgpt-train data=manifest data.root=dir` reads. ARGS passes options, e.g. ARGS='--num-train 500'.
OUT ?= data_out/synthetic
.PHONY: export-synthetic
export-synthetic: $(STAMP)
	$(BIN)/mmgpt-data export-synthetic $(OUT) $(ARGS)

# mmgpt-compare: early/late/cross-attention + unimodal baselines x 3 seeds (conf/experiment/compare_fusion.yaml),
# then cost.json, report.md, report.csv and plots in the sweep directory. `make compare ARGS='seed=0,1'`.
.PHONY: compare compare-all
compare: $(STAMP)
	$(BIN)/mmgpt-compare $(ARGS)

# Every fusion family + unimodal baselines (conf/experiment/compare_all.yaml), each tuned with the same budget of
# TUNE trials (Optuna; search space compare.tune.space), then 3 seeds on each one's best. About an hour on 2 CPUs.
TUNE ?= 4
compare-all: $(STAMP)
	$(BIN)/mmgpt-compare tune=$(TUNE) experiment=compare_all $(ARGS)

.PHONY: bench
bench: $(DEV_STAMP)  ## run the benchmark suite and rewrite BENCHMARKS.md (tens of minutes on 2 CPU cores)
	$(BIN)/python -m bench.lightning_overhead
	$(BIN)/python -m bench.configured_run
	$(BIN)/python -m bench.attention
	$(BIN)/python -m bench.fusions
	$(BIN)/python -m bench.compile
	$(BIN)/python -m bench.dataloader
	$(BIN)/python -m bench.remote_loader
	$(BIN)/python -m bench.feature_cache
	$(BIN)/python -m bench.slim_checkpoint
	$(BIN)/python -m bench.report

.PHONY: bench-peers
bench-peers: $(DEV_STAMP)  ## mmgpt's fusions, then MMSA's architectures in mmgpt, vs MMSA's own TFN/LMF/MulT/EF-LSTM/LF-DNN (about 40 min on 2 CPU cores)
	$(BIN)/python -m bench.peer_mmsa
	$(BIN)/python -m bench.peer_mmsa --exact
	$(BIN)/python -m bench.report
