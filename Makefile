# crossalign: `make demo` trains and evaluates on the built-in shapes data; `make test` runs the tests.
# Both create the virtual environment first if it is missing.

VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/crossalign
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install clean bench

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# a CPU-capable build with a matching torchvision (timm needs it)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(CLI) synth --out demo/data --n 600 --seed 0
	$(CLI) train --data demo/data --out demo/run --budget 1m
	$(CLI) evaluate demo/run --data demo/data --split test --json demo/metrics.json

test: $(STAMP)
	$(PY) -m pytest tests

clean:
	rm -rf demo build *.egg-info

.PHONY: docs
docs: $(STAMP)
	$(PY) -m mkdocs build --strict -f mkdocs.yml -d site
