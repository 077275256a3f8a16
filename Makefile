# Two commands do all set-up on a fresh machine:
#   make serve   start the server on an embedded demo checkpoint and write demo.wav through it
#   make test    lint, then the whole test suite (parity against the PyTorch reference included)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q

.PHONY: serve test lint bench clean-venv

$(VENV)/.runtime: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e .
	touch $@

# torch 2.13.0 first: it resolves to the local CPU wheel, so nothing later pulls a CUDA build.
# qwen-tts and torchaudio come last with --no-deps: their declared requirements would pull
# gradio and a CUDA torch. torchaudio's compiled extensions need CUDA libraries; removing
# them leaves its pure-Python parts, which is all the reference's 12 Hz path imports.
$(VENV)/.test: $(VENV)/.runtime
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	$(PIP) --no-deps qwen-tts==0.1.1 torchaudio==2.11.0
	rm -f $(VENV)/lib/python*/site-packages/torchaudio/lib/*.so
	touch $@

serve: $(VENV)/.runtime
	$(PY) -m server.demo

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(VENV)/.test
	$(PY) benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)
