"""Building blocks shared by the transformers of Qwen3-TTS.

Precision follows the reference exactly: RMSNorm normalises in float32 and casts back
before the weight multiply; RoPE tables are float32 cast to the activation dtype;
attention softmax runs in float32 and is cast back to the query dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class RMSNorm(nnx.Module):
    """`w * (x_f32 * rsqrt(mean(x_f32^2) + eps)).astype(x.dtype)`; the param mirrors torch's `weight`."""

    def __init__(self, dim: int, eps: float, *, dtype=jnp.float32):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * xf.astype(x.dtype)


def linear(in_features: int, out_features: int, *, bias: bool, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """A torch-style Linear; the converter transposes `weight (out, in)` to `kernel (in, out)`."""
    return nnx.Linear(in_features, out_features, use_bias=bias, dtype=dtype, param_dtype=dtype,
                      rngs=rngs)


def embedding(num: int, dim: int, *, dtype, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(num, dim, dtype=dtype, param_dtype=dtype, rngs=rngs)


def rope_tables(positions: jax.Array, head_dim: int, theta: float, dtype) -> tuple[jax.Array, jax.Array]:
    """cos/sin `[..., head_dim]` for integer `positions [...]` (non-interleaved halves)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [..., hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """`x [B, T, N, H]`, `cos/sin [B, T, H]`: `x*cos + rotate_half(x)*sin`."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float) -> jax.Array:
    """Grouped-query attention.

    q `[B, T, N, H]`, k/v `[B, S, K, H]` with N a multiple of K, mask `[B, T, S]` (True = visible).
    Returns `[B, T, N, H]`.
    """
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    qg = q.reshape(b, t, kv_heads, n // kv_heads, h)
    scores = jnp.einsum("btkgh,bskh->bkgts", qg, k) * jnp.asarray(scale, q.dtype)
    scores = jnp.where(mask[:, None, None], scores.astype(jnp.float32), -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
    return out.reshape(b, t, n, h)


def causal_mask(query_slots: jax.Array, key_slots: jax.Array, window: int | None = None) -> jax.Array:
    """`[B, T, S]` visibility from slot indices: key <= query, and within `window` if given."""
    q = query_slots[:, :, None]
    k = key_slots[:, None, :]
    visible = k <= q
    if window is not None:
        visible &= k > q - window
    return visible
