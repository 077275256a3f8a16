"""The code predictor (MTP): expands one frame's c0 into codebooks 1..G-1.

Mirrors `talker.code_predictor.*`. Its codec embeddings have the *talker* width (they are
also summed into the talker's next input), so a 1.7B model projects them down with
`small_to_mtp_projection` before its own, narrower decoder stack; the 0.6B has no projection.
Group g in 1..G-1 is embedded with `codec_embedding[g-1]` and predicted with `lm_head[g-1]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen3tts_jax.config import CodePredictorConfig
from qwen3tts_jax.kv_cache import KVCache
from qwen3tts_jax.layers import embedding, linear
from qwen3tts_jax.transformer import DecoderStack, StackShape


class CodePredictor(DecoderStack):
    def __init__(self, cfg: CodePredictorConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(StackShape.of(cfg), dtype=dtype, rngs=rngs)
        groups = cfg.num_code_groups - 1
        self.codec_embedding = nnx.List([
            embedding(cfg.vocab_size, cfg.talker_hidden_size, dtype=dtype, rngs=rngs)
            for _ in range(groups)])
        self.lm_head = nnx.List([
            linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype, rngs=rngs)
            for _ in range(groups)])
        self.small_to_mtp_projection = (
            linear(cfg.talker_hidden_size, cfg.hidden_size, bias=True, dtype=dtype, rngs=rngs)
            if cfg.has_projection else None)

    def embed_group(self, group: int, ids: jax.Array) -> jax.Array:
        """E_g(ids) for codebook `group` in 1..G-1, talker width."""
        return self.codec_embedding[group - 1](ids)

    def __call__(self, inputs_embeds: jax.Array, positions: jax.Array, cache: KVCache | None = None,
                 write_index: jax.Array | None = None, key_mask: jax.Array | None = None):
        """Project talker-width inputs `[B, T, H_talker]` and run the stack (see DecoderStack)."""
        x = inputs_embeds
        if self.small_to_mtp_projection is not None:
            x = self.small_to_mtp_projection(x)
        return super().__call__(x, positions, cache, write_index, key_mask)

    def logits(self, hidden: jax.Array, group: int) -> jax.Array:
        """Logits of codebook `group` (1..G-1) in float32."""
        return self.lm_head[group - 1](hidden).astype(jnp.float32)


def frame_embedding(talker, predictor: CodePredictor, codes: jax.Array) -> jax.Array:
    """F(frame) = C(c0) + sum_g E_g(c_g) for `codes [..., G]`: a frame as the talker's next input
    (C is the talker's codec embedding, E_g this predictor's)."""
    total = talker.embed_codec(codes[..., 0])
    for g in range(1, codes.shape[-1]):
        total = total + predictor.embed_group(g, codes[..., g])
    return total
