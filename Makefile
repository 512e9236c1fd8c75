# The two commands a fresh machine needs (see README.md):
#   make demo   runs the main job on an embedded default
#   make test   installs everything the tests need (pip + apt) and runs them
PYTHON ?= python3

.PHONY: demo test deps install

install:
	$(PYTHON) -m pip install -q -e '.[test]'

deps:
	bash tests/install-deps.sh

demo: install
	$(PYTHON) -m engine.demo

test: deps
	$(PYTHON) -m pytest -q -p no:cacheprovider
