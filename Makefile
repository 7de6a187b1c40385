# lmforge: set-up, quickstart and tests. Every target creates what is missing.
#   make quickstart   venv + install + fine-tune tiny-llama on the bundled data + evaluate
#   make test         venv + install + the whole test suite, then its modeling/PEFT/generation/serving
#                     tests again in .venv-latest (the newest transformers/peft/accelerate our ranges allow)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# setuptools' editable builds emit an InformationOnly note ("Editable installation ... be careful with
# folders named like the package"): a UserWarning about editable installs in general, not about this
# project. The variable keeps it (and only UserWarnings) out of the set-up output.
QUIETBUILD := PYTHONWARNINGS=ignore::UserWarning
PIP    := $(QUIETBUILD) $(PY) -m pip
STAMP  := $(VENV)/.lmforge-installed
PLUGINS := $(sort $(wildcard llm_plugins_*/pyproject.toml))

.PHONY: setup setup-latest quickstart test test-latest test-fast clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, pinned to the CPU build, so nothing later pulls a CUDA build
$(STAMP): $(PY) pyproject.toml constraints.txt $(PLUGINS)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[train,quant,deepspeed,test]"
	for p in $(dir $(PLUGINS)); do $(PIP) install --quiet -c constraints.txt -e ./$$p || exit 1; done
	touch $(STAMP)

setup: $(STAMP)

# A second environment with the newest releases the declared ranges allow (no constraints file),
# so a dependency that renames an argument inside our range breaks CI, not users.
LATEST    := .venv-latest
LPY       := $(LATEST)/bin/python
LSTAMP    := $(LATEST)/.lmforge-installed
$(LPY):
	$(PYTHON) -m venv $(LATEST)
	$(QUIETBUILD) $(LPY) -m pip install --quiet --upgrade pip

$(LSTAMP): $(LPY) pyproject.toml $(PLUGINS)
	$(QUIETBUILD) $(LPY) -m pip install --quiet torch==2.13.0
	$(QUIETBUILD) $(LPY) -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[train,quant,test]" transformers peft accelerate bitsandbytes
	for p in $(dir $(PLUGINS)); do $(QUIETBUILD) $(LPY) -m pip install --quiet -e ./$$p || exit 1; done
	touch $(LSTAMP)

setup-latest: $(LSTAMP)

quickstart: setup
	$(VENV)/bin/lmforge train examples/quickstart.yaml
	$(PY) examples/evaluate.py runs/quickstart

test: setup setup-latest
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory test-latest

# modeling, PEFT, generation and serving tests against the newest allowed transformers/peft/accelerate
test-latest: setup-latest
	$(LPY) -c "import transformers, peft, accelerate; print('newest allowed: transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
	$(LPY) -m pytest -q -m "latest"

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf runs .pytest_cache
