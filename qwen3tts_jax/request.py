"""What one utterance asks for (`GenerationRequest`), and the defaults a checkpoint gives it.

The sampling defaults have one source: a checkpoint's `generation_config.json`, read once by
`GenerationDefaults.from_dir`, falling back to `GenerationRequest`'s field defaults (the
reference's hard defaults). The API and the server both build requests through
`GenerationDefaults.request`, so a fine-tuned checkpoint sounds the same through either.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from qwen3tts_jax.voice import VoicePrompt

# The knobs `generation_config.json` may set, as `GenerationRequest` names them.
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "repetition_penalty",
                   "subtalker_temperature", "subtalker_top_k", "subtalker_top_p")


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """One utterance to generate; the sampling defaults are the reference's own.

    What it speaks with depends on the model (`PromptBuilder.check`): Base, a `voice` prompt;
    CustomVoice, a preset `speaker` (and an `instruct` at 1.7B); VoiceDesign, an `instruct`
    describing the voice. `non_streaming_text=None` is the model's default layout.
    """

    text: str
    voice: VoicePrompt | None = None
    language: str = "auto"
    seed: int = 0
    greedy: bool = False
    max_new_frames: int | None = None  # None: the engine's default (the checkpoint's max_new_tokens - 1)
    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.05
    subtalker_temperature: float = 0.9
    subtalker_top_k: int = 50
    subtalker_top_p: float = 1.0
    non_streaming_text: bool | None = None
    speaker: str | None = None
    instruct: str | None = None

    def check(self, text_open: bool = False) -> None:
        """ValueError for a request no engine can run (`text_open`: its text is only the start,
        maybe empty, of a text still being written)."""
        if not isinstance(self.text, str) or not (text_open or self.text.strip()):
            raise ValueError("text is empty")
        if self.voice is not None and not isinstance(self.voice, VoicePrompt):
            raise ValueError("voice must be a VoicePrompt (see Qwen3TTS.create_voice_prompt)")
        if self.speaker is not None and not isinstance(self.speaker, str):
            raise ValueError("speaker must be a str")
        if not self.greedy and not (self.temperature > 0 and self.subtalker_temperature > 0):
            raise ValueError("temperature must be > 0 (use greedy=True for argmax decoding)")
        if not (0 < self.top_p <= 1 and 0 < self.subtalker_top_p <= 1):
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0 or self.subtalker_top_k < 0:
            raise ValueError("top_k must be >= 0 (0 disables it)")
        if not self.repetition_penalty > 0:
            raise ValueError("repetition_penalty must be > 0")
        if self.max_new_frames is not None and self.max_new_frames < 1:
            raise ValueError("max_new_frames must be >= 1")


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GenerationRequest)}
# The reference stops at max_new_tokens sampled tokens = max_new_tokens - 1 frames.
_FALLBACK_MAX_NEW_TOKENS = 2048


@dataclasses.dataclass(frozen=True)
class GenerationDefaults:
    """A checkpoint's sampling defaults and frame limit."""

    sampling: tuple[tuple[str, Any], ...] = tuple((k, _FIELD_DEFAULTS[k]) for k in SAMPLING_FIELDS)
    max_new_frames: int = _FALLBACK_MAX_NEW_TOKENS - 1

    @classmethod
    def from_dir(cls, path: str | Path) -> GenerationDefaults:
        """From `path/generation_config.json`; absent keys (or file) keep the reference's defaults."""
        file = Path(path) / "generation_config.json"
        try:
            gen = json.loads(file.read_text()) if file.exists() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: not valid JSON ({e})") from None
        sampling = tuple((k, type(_FIELD_DEFAULTS[k])(gen.get(k, _FIELD_DEFAULTS[k]))) for k in SAMPLING_FIELDS)
        return cls(sampling, int(gen.get("max_new_tokens", _FALLBACK_MAX_NEW_TOKENS)) - 1)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.sampling)

    def request(self, text: str, voice: VoicePrompt | None = None, language: str = "auto",
                **options) -> GenerationRequest:
        """A request with these defaults under `options` (None values keep the default;
        unknown names are a TypeError)."""
        given = {k: v for k, v in options.items() if v is not None}
        unknown = set(given) - set(_FIELD_DEFAULTS)
        if unknown:
            raise TypeError(f"unexpected keyword arguments {sorted(unknown)}")
        return GenerationRequest(text, voice, language, **{**self.as_dict(), **given})
