# Two commands do all set-up on a fresh machine:
#   make serve   start the server on an embedded demo checkpoint and write demo.wav through it
#   make test    lint, then the whole test suite (parity against the PyTorch reference included)
# (make bench: the CPU benchmarks of BENCHMARKS.md.)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q

.PHONY: serve test lint bench clean-venv integrations

$(VENV)/.runtime: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e .
	touch $@

# torch 2.13.0 first: it resolves to the local CPU wheel, so nothing later pulls a CUDA build.
# qwen-tts and torchaudio come last with --no-deps: their declared requirements would pull
# gradio and a CUDA torch. torchaudio's compiled extensions need CUDA libraries; removing
# them leaves its pure-Python parts, which is all the reference's 12 Hz path imports.
# The browser test drives Debian's chromium (no other browser can be downloaded here); the
# balancer test runs Debian's nginx in front of two server replicas.
$(VENV)/.test: $(VENV)/.runtime
	command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v nginx >/dev/null || \
		(apt-get update -q && apt-get install -y -q chromium chromium-driver nginx)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	$(PIP) --no-deps qwen-tts==0.1.1 torchaudio==2.11.0
	rm -f $(VENV)/lib/python*/site-packages/torchaudio/lib/*.so
	touch $@

# The server in the background, the client once (demo.wav), then the server in the foreground.
PORT ?= 8765
TEXT ?= Hello! This sentence was streamed through the qwen3tts-jax server.
SERVE_ARGS ?=
serve: $(VENV)/.runtime
	@$(PY) -m qwen3tts_jax.server --port $(PORT) $(SERVE_ARGS) & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid' INT TERM; \
	$(PY) -c "import sys, time, urllib.request as u; t = time.time() + 1800; \
	exec('while time.time() < t:\n try:\n  u.urlopen(\"http://127.0.0.1:$(PORT)/healthz\", timeout=5); sys.exit(0)\n except Exception:\n  time.sleep(1)'); sys.exit(1)" \
	&& $(PY) -m qwen3tts_jax.server.client --url ws://127.0.0.1:$(PORT)/api/v1/speak --text "$(TEXT)" --out demo.wav \
	&& echo "wrote demo.wav through the server; still serving ws://127.0.0.1:$(PORT)/api/v1/speak (Ctrl-C stops it)"; \
	wait $$pid

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .

# Pipecat and LiveKit each in a venv of their own (~500 MB each; they pin numpy, protobuf and
# openai versions of their own): tests/test_integrations.py runs their OpenAI TTS classes
# against the server from these.
INTEGRATIONS := .venv-integrations
$(INTEGRATIONS)/%/.installed: tests/integrations/requirements-%.txt
	test -x $(INTEGRATIONS)/$*/bin/python || python3 -m venv $(INTEGRATIONS)/$*
	$(INTEGRATIONS)/$*/bin/python -m pip install -q -r $<
	touch $@
integrations: $(INTEGRATIONS)/pipecat/.installed $(INTEGRATIONS)/livekit/.installed

test: lint integrations
	$(PY) -m pytest -q -p no:cacheprovider

# The CPU benchmarks recorded in BENCHMARKS.md (each side by side with the reference, results in
# benchmarks/results/): decode speed at batch 1-16, then the speech tokenizer. GPU: benchmarks/gpu.sh.
bench: $(VENV)/.test
	$(PY) benchmarks/generation.py --frames 10 --batch 1 4 8 16 --dtypes float32
	$(PY) benchmarks/codec.py

clean-venv:
	rm -rf $(VENV)
