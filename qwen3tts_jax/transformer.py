"""The Qwen3 decoder stack shared by the talker and the code predictor.

Pre-norm layers: `x += attn(input_layernorm(x)); x += mlp(post_attention_layernorm(x))`,
with per-head RMSNorm on q and k *before* RoPE, grouped-query attention, SwiGLU MLP.
Attribute names mirror the reference modules so the converter table stays obvious.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from qwen3tts_jax.kv_cache import KVCache, write_rows
from qwen3tts_jax.layers import RMSNorm, apply_rope, attend, causal_mask, linear, rope_tables


@dataclasses.dataclass(frozen=True)
class StackShape:
    """The fields of a talker or code-predictor config that shape the decoder stack."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float

    @classmethod
    def of(cls, cfg) -> StackShape:
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


class Attention(nnx.Module):
    def __init__(self, s: StackShape, *, dtype, rngs: nnx.Rngs):
        h, n, k, d = s.hidden_size, s.num_attention_heads, s.num_key_value_heads, s.head_dim
        self.q_proj = linear(h, n * d, bias=False, dtype=dtype, rngs=rngs)
        self.k_proj = linear(h, k * d, bias=False, dtype=dtype, rngs=rngs)
        self.v_proj = linear(h, k * d, bias=False, dtype=dtype, rngs=rngs)
        self.o_proj = linear(n * d, h, bias=False, dtype=dtype, rngs=rngs)
        self.q_norm = RMSNorm(d, s.rms_norm_eps, dtype=dtype)
        self.k_norm = RMSNorm(d, s.rms_norm_eps, dtype=dtype)
        self.num_heads, self.num_kv_heads, self.head_dim = n, k, d

    def __call__(self, x, cos, sin, mask, past: tuple[jax.Array, jax.Array] | None,
                 write_index: jax.Array | None):
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim))
        k = self.k_norm(self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim))
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k = write_rows(past[0], k, write_index)  # [B, S, K, H]
            v = write_rows(past[1], v, write_index)
        span = mask.shape[-1]  # attend only to the slots the mask covers (static)
        # The queries' rows: the cache may hold more (a step over its first, active rows).
        out = attend(q, k[:b, :span].astype(q.dtype), v[:b, :span].astype(q.dtype), mask, self.head_dim ** -0.5)
        return self.o_proj(out.reshape(b, t, -1)), (k, v)


class MLP(nnx.Module):
    def __init__(self, hidden: int, intermediate: int, *, dtype, rngs: nnx.Rngs):
        self.gate_proj = linear(hidden, intermediate, bias=False, dtype=dtype, rngs=rngs)
        self.up_proj = linear(hidden, intermediate, bias=False, dtype=dtype, rngs=rngs)
        self.down_proj = linear(intermediate, hidden, bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, s: StackShape, *, dtype, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps, dtype=dtype)
        self.self_attn = Attention(s, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps, dtype=dtype)
        self.mlp = MLP(s.hidden_size, s.intermediate_size, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, mask, past, write_index):
        attn, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, past, write_index)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, kv


class DecoderStack(nnx.Module):
    """`layers` + final `norm`. Runs a plain causal forward, or writes into a `KVCache`."""

    def __init__(self, s: StackShape, *, dtype, rngs: nnx.Rngs):
        self.layers = nnx.List([DecoderLayer(s, dtype=dtype, rngs=rngs)
                                for _ in range(s.num_hidden_layers)])
        self.norm = RMSNorm(s.hidden_size, s.rms_norm_eps, dtype=dtype)
        self.head_dim, self.rope_theta = s.head_dim, s.rope_theta

    def __call__(self, x: jax.Array, positions: jax.Array, cache: KVCache | None = None,
                 write_index: jax.Array | None = None, key_mask: jax.Array | None = None,
                 attend_len: int | None = None):
        """Run the stack over `x [B, T, D]` with RoPE `positions [B, T]`.

        Without a cache: causal attention over the T inputs (`key_mask [B, T]` hides padding).
        With a cache: row b's inputs go to slots `write_index[b] .. write_index[b]+T-1` and
        attend to every slot up to their own; rows are right-padded, so RoPE positions are
        the slots themselves for real tokens. `attend_len` (static) limits attention to the
        first slots of the cache when the caller knows every row's queries lie below it: the
        step then reads only that much of the cache. Returns `(normed hidden [B, T, D], kv)`
        where kv is the updated cache, or without a cache the T new keys/values (what a
        prefill writes).
        """
        b, t, _ = x.shape
        cos, sin = rope_tables(positions, self.head_dim, self.rope_theta, x.dtype)
        if cache is None:
            slots = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
            mask = causal_mask(slots, slots)
            if key_mask is not None:
                mask &= key_mask[:, None, :].astype(bool)
        else:
            span = cache.max_len if attend_len is None else min(attend_len, cache.max_len)
            q_slots = write_index[:, None].astype(jnp.int32) + jnp.arange(t, dtype=jnp.int32)
            k_slots = jnp.broadcast_to(jnp.arange(span, dtype=jnp.int32), (b, span))
            mask = causal_mask(q_slots, k_slots)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            past = None if cache is None else (cache.keys[i], cache.values[i])
            x, (k, v) = layer(x, cos, sin, mask, past, write_index)
            keys.append(k)
            values.append(v)
        return self.norm(x), KVCache(tuple(keys), tuple(values))
