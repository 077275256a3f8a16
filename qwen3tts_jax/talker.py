"""The talker: a Qwen3 decoder over summed text + codec tracks that predicts codebook 0.

Mirrors `talker.model.*` / `talker.text_projection` / `talker.codec_head` of the reference.
It never embeds token ids inside `__call__`: callers build `inputs_embeds` from
`embed_text` (P) and `embed_codec` (C) rows, exactly as the reference's prompt builder does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen3tts_jax.config import TalkerConfig
from qwen3tts_jax.layers import embedding, linear
from qwen3tts_jax.transformer import DecoderStack, StackShape

# Text ids are projected in blocks of this many rows, whatever their number (`embed_text_blocked`).
TEXT_BLOCK = 16


class TextProjection(nnx.Module):
    """`linear_fc2(silu(linear_fc1(x)))`, both with bias (reference `Qwen3TTSTalkerResizeMLP`)."""

    def __init__(self, text_hidden: int, hidden: int, *, dtype, rngs: nnx.Rngs):
        self.linear_fc1 = linear(text_hidden, text_hidden, bias=True, dtype=dtype, rngs=rngs)
        self.linear_fc2 = linear(text_hidden, hidden, bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.linear_fc2(jax.nn.silu(self.linear_fc1(x)))


class Talker(DecoderStack):
    def __init__(self, cfg: TalkerConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(StackShape.of(cfg), dtype=dtype, rngs=rngs)
        self.text_embedding = embedding(cfg.text_vocab_size, cfg.text_hidden_size, dtype=dtype, rngs=rngs)
        self.text_projection = TextProjection(cfg.text_hidden_size, cfg.hidden_size, dtype=dtype, rngs=rngs)
        self.codec_embedding = embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype, rngs=rngs)
        self.codec_head = linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype, rngs=rngs)

    def embed_text(self, ids: jax.Array) -> jax.Array:
        """P(ids): text-track vectors `[..., hidden]`."""
        return self.text_projection(self.text_embedding(ids))

    def embed_text_blocked(self, ids: jax.Array) -> jax.Array:
        """P(ids) for `ids [n]`, n a multiple of TEXT_BLOCK, one TEXT_BLOCK-row block at a time.

        A matmul's rows can round differently with the number of rows (another kernel), so
        the trailing text, projected all at once for a whole text but in pieces for text that
        arrives while speaking, goes through one fixed block shape: each vector is then
        bit-identical however its ids were grouped."""
        blocks = jax.lax.map(self.embed_text, ids.reshape(-1, TEXT_BLOCK))
        return blocks.reshape(ids.shape[0], -1)

    def embed_codec(self, ids: jax.Array) -> jax.Array:
        """C(ids): codec-track vectors of codebook 0 and the control tokens."""
        return self.codec_embedding(ids)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Codec-head logits in float32 (the reference casts before sampling)."""
        return self.codec_head(hidden).astype(jnp.float32)
