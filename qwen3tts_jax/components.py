"""The registry of model components: how each Flax module is built from the config.

The converter uses it to learn every target parameter's path and shape (via
`nnx.eval_shape`, allocating nothing) and the loader to rebuild the modules.
The speech tokenizer and the speaker encoder always run in float32: they are small,
convolution-heavy and quality-critical, and the released speech tokenizer is float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx

from qwen3tts_jax.config import Qwen3TTSConfig


@dataclasses.dataclass(frozen=True)
class Component:
    build: Callable  # (cfg, dtype, rngs) -> nnx.Module
    present: Callable[[Qwen3TTSConfig], bool]
    follows_dtype: bool  # False: always float32


def _talker(cfg, dtype, rngs):
    from qwen3tts_jax.talker import Talker
    return Talker(cfg.talker, dtype=dtype, rngs=rngs)


def _code_predictor(cfg, dtype, rngs):
    from qwen3tts_jax.code_predictor import CodePredictor
    return CodePredictor(cfg.code_predictor, dtype=dtype, rngs=rngs)


def _speaker_encoder(cfg, dtype, rngs):
    from qwen3tts_jax.speaker_encoder import SpeakerEncoder
    return SpeakerEncoder(cfg.speaker_encoder, rngs=rngs)


def _codec_encoder(cfg, dtype, rngs):
    from qwen3tts_jax.codec_encoder import CodecEncoder
    return CodecEncoder(cfg.speech_tokenizer.encoder, rngs=rngs)


def _codec_decoder(cfg, dtype, rngs):
    from qwen3tts_jax.codec_decoder import CodecDecoder
    return CodecDecoder(cfg.speech_tokenizer.decoder, rngs=rngs)


def _always(cfg) -> bool:
    return True


COMPONENTS: dict[str, Component] = {
    "talker": Component(_talker, _always, True),
    "code_predictor": Component(_code_predictor, _always, True),
    "speaker_encoder": Component(_speaker_encoder, lambda cfg: cfg.speaker_encoder is not None, False),
    "codec_decoder": Component(_codec_decoder, lambda cfg: cfg.speech_tokenizer is not None, False),
    # The Mimi encoder turns reference audio into codes: only Base models (voice cloning) take audio.
    "codec_encoder": Component(_codec_encoder,
                               lambda cfg: cfg.speech_tokenizer is not None and cfg.tts_model_type == "base", False),
}

# Components whose weights a checkpoint may carry but a model of another type never runs:
# CustomVoice and VoiceDesign ship the shared speech tokenizer (with its encoder), and a
# fine-tune made from a Base model may keep its speaker encoder.
_BASE_ONLY = ("speaker_encoder", "codec_encoder")


def component_dtype(name: str, dtype) -> jnp.dtype:
    return jnp.dtype(dtype) if COMPONENTS[name].follows_dtype else jnp.dtype(jnp.float32)


def present(cfg: Qwen3TTSConfig) -> list[str]:
    """Names of the components this checkpoint has, in registry order."""
    return [name for name, c in COMPONENTS.items() if c.present(cfg)]


def unused(cfg: Qwen3TTSConfig) -> set[str]:
    """Components whose weights this checkpoint may hold but its model type never uses (the
    converter skips their keys)."""
    return set() if cfg.tts_model_type == "base" else set(_BASE_ONLY)


def build(name: str, cfg: Qwen3TTSConfig, dtype=jnp.float32, seed: int = 0) -> nnx.Module:
    """Build component `name` with random weights."""
    return COMPONENTS[name].build(cfg, component_dtype(name, dtype), nnx.Rngs(seed))


def abstract(name: str, cfg: Qwen3TTSConfig, dtype=jnp.float32) -> nnx.Module:
    """The component with `ShapeDtypeStruct` leaves: shapes without allocation."""
    return nnx.eval_shape(lambda: build(name, cfg, dtype))
