"""What the server needs from the model, and how it loads the real one.

A `Backend` bundles the `Qwen3TTS` object (voice prompts, languages), its `BatchEngine`
(continuous batching, driven only from the device worker thread), and the request and prompt
classes. Tests build a Backend around a test double; the server never imports tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("qwen3tts.server")

DEMO_CHECKPOINT_DIR = Path(os.environ.get("QWEN3TTS_CACHE", ".cache")) / "demo-checkpoint"
DEMO_WARNING = (
    "serving the embedded DEMO checkpoint with RANDOM weights: the audio is NOT speech. "
    "Give real weights with --model Qwen/Qwen3-TTS-12Hz-0.6B-Base or a local folder."
)


@dataclass
class Backend:
    tts: Any  # Qwen3TTS: create_voice_prompt(ref_audio, ref_text), languages
    engine: Any  # BatchEngine: admit/step/release/active_slots/sample_rate
    request_cls: Any  # GenerationRequest
    prompt_cls: Any  # VoicePrompt (has .load(path))
    model_key: str  # identifies the weights, so cached voice prompts of other models are ignored
    languages: list[str]
    is_demo: bool = False

    @property
    def sample_rate(self) -> int:
        return int(self.engine.sample_rate)


def model_fingerprint(path: str) -> str:
    """A short key for the weights at `path` (a local folder or a hub id)."""
    p = Path(path)
    h = hashlib.sha256(str(p.resolve() if p.exists() else path).encode())
    if p.is_dir():
        for f in sorted(p.rglob("*")):
            if f.is_file() and f.suffix in (".json", ".safetensors", ".npz", ".msgpack", ""):
                st = f.stat()
                h.update(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def ensure_demo_checkpoint(dst: Path = DEMO_CHECKPOINT_DIR) -> Path:
    """Build (once) or reuse the small random-weight demo checkpoint in the real layout."""
    if (dst / "config.json").exists():
        log.info(json.dumps({"event": "demo_checkpoint_reused", "path": str(dst)}))
        return dst
    from qwen3tts_jax.convert.demo import build_demo_checkpoint  # lead's module; no torch

    log.info(json.dumps({"event": "demo_checkpoint_build", "path": str(dst)}))
    dst.parent.mkdir(parents=True, exist_ok=True)
    out = build_demo_checkpoint(dst)
    return Path(out) if out is not None else dst


def load_backend(model: str | None, dtype: str, num_slots: int) -> Backend:
    """Load the real model (heavy imports here only). `model=None` means the demo checkpoint."""
    is_demo = model is None
    if is_demo:
        model = str(ensure_demo_checkpoint())
        log.warning(json.dumps({"event": "demo_weights", "message": DEMO_WARNING}))

    from qwen3tts_jax import Qwen3TTS

    request_cls = _first_attr("GenerationRequest", "qwen3tts_jax", "qwen3tts_jax.engine", "qwen3tts_jax.api")
    prompt_cls = _first_attr("VoicePrompt", "qwen3tts_jax", "qwen3tts_jax.voice", "qwen3tts_jax.api")
    tts = Qwen3TTS.from_pretrained(model, dtype=dtype)
    engine = tts.batch_engine(num_slots=num_slots)
    return Backend(
        tts=tts,
        engine=engine,
        request_cls=request_cls,
        prompt_cls=prompt_cls,
        model_key=f"{model_fingerprint(model)}-{dtype}",
        languages=display_languages(tts.languages),
        is_demo=is_demo,
    )


def _first_attr(name: str, *modules: str):
    """`name` from the first of `modules` that exports it (the engine's layout is still moving)."""
    import importlib

    for mod in modules:
        try:
            obj = getattr(importlib.import_module(mod), name, None)
        except ImportError:
            continue
        if obj is not None:
            return obj
    raise ImportError(f"{name} not found in {modules}")


def display_languages(names) -> list[str]:
    """The engine's language names for clients: "english" -> "English"; "auto" is implied."""
    return [n.title() if n.islower() else n for n in names if n.lower() != "auto"]
