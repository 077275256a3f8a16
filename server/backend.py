"""What the server needs from the model, and how it loads the real one.

A `Backend` bundles the model facade (voice prompts, languages), its `BatchEngine`
(continuous batching, driven only from the device worker thread), the checkpoint's
generation defaults and the request rules the server applies on top (`make_request`). Tests
build a Backend around a test double of the same shape; the server never imports tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from qwen3tts_jax import paths
from qwen3tts_jax.request import GenerationDefaults, GenerationRequest

log = logging.getLogger("qwen3tts.server")

DEMO_WARNING = (
    "serving the embedded DEMO checkpoint with RANDOM weights: the audio is NOT speech. "
    "Give real weights with --model Qwen/Qwen3-TTS-12Hz-0.6B-Base or a local folder."
)


class Model(Protocol):
    """The part of `Qwen3TTS` the server uses."""

    def create_voice_prompt(self, ref_audio: Any, ref_text: str | None = None) -> Any: ...


class Engine(Protocol):
    """The part of `BatchEngine` the device worker uses."""

    def admit(self, slot: int, request: GenerationRequest) -> None: ...
    def step(self) -> dict[int, Any]: ...
    def release(self, slot: int) -> None: ...
    def active_slots(self) -> list[int]: ...


class PromptLoader(Protocol):
    """A voice prompt class: `load(path)` reads what `prompt.save(path)` wrote."""

    def load(self, path: Any) -> Any: ...


@dataclass
class Backend:
    tts: Model
    engine: Engine
    prompt_cls: PromptLoader
    model_key: str  # identifies the weights, so cached voice prompts of other models are ignored
    languages: list[str]
    sample_rate: int
    frame_rate: float  # codec frames per second of audio
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)  # generation_config.json
    is_demo: bool = False
    model_type: str = "base"  # "base" | "custom_voice" | "voice_design"
    speakers: list[str] = field(default_factory=list)  # CustomVoice preset speakers
    supports_instruct: bool = False
    spoken_dialects: dict[str, str] = field(default_factory=dict)  # preset speaker -> dialect it speaks

    @property
    def clones_voices(self) -> bool:
        """Base models clone registered voices; the others speak with preset or described voices."""
        return self.model_type == "base"

    def default_voice(self) -> str | None:
        """The voice a session speaks with until it picks one: a preset speaker (CustomVoice), none
        (VoiceDesign: the instruct describes it); Base models use the voice store's default."""
        return self.speakers[0] if self.speakers else None

    def make_request(self, text: str, voice: Any, language: str, *, seed: int, max_new_frames: int | None,
                     max_audio_seconds: float, text_open: bool = False, **sampling) -> GenerationRequest:
        """A request with the checkpoint's defaults under the client's `sampling` (None keeps the
        default; `speaker=` and `instruct=` pass through). Without `max_new_frames`, a budget
        guards against a missing EOS: about 0.25 s of audio per character + 3 s, at most
        `max_audio_seconds` (all of it for a streamed text, whose length is not known yet: it
        gets `frame_budget` of its length at its end)."""
        if max_new_frames is None:
            max_new_frames = (max(1, int(max_audio_seconds * self.frame_rate)) if text_open
                              else self.frame_budget(len(text), max_audio_seconds))
        return self.defaults.request(text, voice, language, seed=seed, max_new_frames=max_new_frames,
                                     non_streaming_text=False if text_open else None, **sampling)

    def frame_budget(self, chars: int, max_audio_seconds: float) -> int:
        """The frames a text of `chars` characters may take without an EOS (see make_request)."""
        return max(1, int(min(max_audio_seconds, 3.0 + 0.25 * chars) * self.frame_rate))


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


def ensure_demo_checkpoint(dst: Path | None = None) -> Path:
    """Build (once) or reuse the small random-weight demo checkpoint in the real layout
    (default `paths.demo_checkpoint_dir()`)."""
    from qwen3tts_jax.convert.demo import build_demo_checkpoint  # no torch

    dst = dst or paths.demo_checkpoint_dir()
    if (dst / "config.json").exists():
        log.info(json.dumps({"event": "demo_checkpoint_reused", "path": str(dst)}))
        return dst
    log.info(json.dumps({"event": "demo_checkpoint_build", "path": str(dst)}))
    dst.parent.mkdir(parents=True, exist_ok=True)
    out = build_demo_checkpoint(dst)
    return Path(out) if out is not None else dst


def load_backend(model: str | None, dtype: str, num_slots: int) -> Backend:
    """Load the real model (heavy imports here only). `model=None` means the demo checkpoint."""
    from qwen3tts_jax import Qwen3TTS

    is_demo = model is None
    if is_demo:
        model = str(ensure_demo_checkpoint())
        log.warning(json.dumps({"event": "demo_weights", "message": DEMO_WARNING}))
    tts = Qwen3TTS.from_pretrained(model, dtype=dtype)
    return backend_for(tts, num_slots, f"{model_fingerprint(model)}-{dtype}", is_demo=is_demo)


def backend_for(tts: Any, num_slots: int, model_key: str, is_demo: bool = False) -> Backend:
    """The Backend of a loaded `Qwen3TTS`, with an engine of `num_slots`."""
    from qwen3tts_jax import VoicePrompt

    return Backend(
        tts=tts,
        engine=tts.batch_engine(num_slots=num_slots),
        prompt_cls=VoicePrompt,
        model_key=model_key,
        languages=display_languages(tts.languages),
        sample_rate=tts.sample_rate,
        frame_rate=tts.sample_rate / tts.samples_per_frame,
        defaults=tts.defaults,
        is_demo=is_demo,
        model_type=tts.model_type,
        speakers=tts.speakers,
        supports_instruct=tts.supports_instruct,
        spoken_dialects={s: d for s in tts.speakers if (d := tts.config.talker.dialect_of(s))},
    )


def display_languages(names: Sequence[str]) -> list[str]:
    """The engine's language names for clients: "english" -> "English"; "auto" is implied."""
    return [n.title() if n.islower() else n for n in names if n.lower() != "auto"]
