# Two entry points for a fresh machine:
#   make train   set everything up, then train the default config (the MNIST MLP)
#   make test    set everything up, then run the test suite
# Data: torchvision downloads MNIST where the network allows; otherwise point the tool at
# existing data with  make train MLP_CLI_DATA=/path/containing/MNIST
VENV   ?= .venv
PYTHON ?= python3
CONFIG ?= configs/mnist_mlp.yaml
ifdef MLP_CLI_DATA
export MLP_CLI_DATA
endif

.PHONY: setup train test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test,sweep]'
	touch $@

train: setup
	$(VENV)/bin/mlp-cli train --config $(CONFIG)

# pytest exits 5 when it collected no test: make treats that, like any failure, as an error.
test: setup
	$(VENV)/bin/python -m pytest -q

bench: setup
	$(VENV)/bin/python benchmarks/engine_speed.py

clean:
	rm -rf $(VENV) .pytest_cache
