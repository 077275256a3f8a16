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
    "codec_encoder": Component(_codec_encoder, lambda cfg: cfg.speech_tokenizer is not None, False),
}


def component_dtype(name: str, dtype) -> jnp.dtype:
    return jnp.dtype(dtype) if COMPONENTS[name].follows_dtype else jnp.dtype(jnp.float32)


def present(cfg: Qwen3TTSConfig) -> list[str]:
    """Names of the components this checkpoint has, in registry order."""
    return [name for name, c in COMPONENTS.items() if c.present(cfg)]


def build(name: str, cfg: Qwen3TTSConfig, dtype=jnp.float32, seed: int = 0) -> nnx.Module:
    """Build component `name` with random weights."""
    return COMPONENTS[name].build(cfg, component_dtype(name, dtype), nnx.Rngs(seed))


def abstract(name: str, cfg: Qwen3TTSConfig, dtype=jnp.float32) -> nnx.Module:
    """The component with `ShapeDtypeStruct` leaves: shapes without allocation."""
    return nnx.eval_shape(lambda: build(name, cfg, dtype))
