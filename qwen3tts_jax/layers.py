"""Building blocks shared by the transformers of Qwen3-TTS.

Precision follows the reference exactly: RMSNorm normalises in float32 and casts back
before the weight multiply; RoPE tables are float32 cast to the activation dtype;
attention softmax runs in float32 and is cast back to the query dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from qwen3tts_jax import kernels


class RMSNorm(nnx.Module):
    """`w * (x_f32 * rsqrt(mean(x_f32^2) + eps)).astype(x.dtype)`; the param mirrors torch's `weight`."""

    def __init__(self, dim: int, eps: float, *, dtype=jnp.float32):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * xf.astype(x.dtype)


class Linear(nnx.Module):
    """torch's `nn.Linear`, in torch's layout: `weight (out, in)`, `y = x @ weight.T + bias`.

    The weight is not transposed to Flax's `(in, out)` kernel on purpose: XLA's CPU dot
    contracting the weight's minor axis runs about twice as fast for 8-32 rows (a batched
    decode step) and the same for one row (BENCHMARKS.md, "What moved the numbers").

    `packed` (static, set by `pack_linears`): the float32 model's weight is stored as the
    bfloat16 values it holds exactly and multiplied by the CPU kernel (`kernels.bf16_matmul`).
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool, dtype, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal(in_axis=1, out_axis=0)
        self.weight = nnx.Param(init(rngs.params(), (out_features, in_features), dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), dtype)) if bias else None
        self.dtype = dtype
        self.packed = False

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        y = kernels.bf16_matmul(x, self.weight[...]) if self.packed else dot_weight(x, self.weight[...])
        return y if self.bias is None else y + self.bias[...]


# Row counts for which `dot_weight` multiplies `weight @ x.T` on XLA's CPU backend (see below).
COLUMN_DOT_ROWS = (2, 256)


def dot_weight(x: jax.Array, w: jax.Array) -> jax.Array:
    """`x [..., in] @ w.T` for a torch-layout weight `w (out, in)` of `x`'s dtype, in the fastest
    form XLA has for this many rows (every unpacked Linear and head goes through here)."""
    rows = math.prod(x.shape[:-1])
    if COLUMN_DOT_ROWS[0] <= rows <= COLUMN_DOT_ROWS[1] and jax.default_backend() == "cpu":
        return _rows_as_columns_dot(x, w)
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (1,)), ((), ())))


def _rows_as_columns_dot(x: jax.Array, w: jax.Array) -> jax.Array:
    """`x @ w.T` computed as `(w @ x.T).T`, for a few rows on XLA's CPU backend.

    XLA's CPU dot with the weight on the left and the rows as columns runs about a third faster
    for 4-128 rows (24 chained [3072 x 1024] float32 weights, 16 rows: 38 -> 25 ms; 1 row takes
    the matrix-vector path either way; equal from ~512 rows). XLA folds plain transposes back
    into the usual dot, so optimization barriers pin them: they copy only the activations.
    """
    flat = x.reshape(-1, x.shape[-1])
    xt = jax.lax.optimization_barrier(flat.T)
    yt = jax.lax.optimization_barrier(jax.lax.dot_general(w, xt, (((1,), (0,)), ((), ()))))
    return yt.T.reshape(*x.shape[:-1], w.shape[0])


def bf16_if_exact(w: jax.Array) -> jax.Array:
    """`w` as bfloat16 when every value of the float32 matrix is a bfloat16 value, else `w`.

    Lossless storage for `kernels.bf16_matmul`: a released checkpoint's weights are bfloat16,
    so a float32 model holds them exactly, and `dot_weight` then reads half the bytes while
    the activations and arithmetic stay float32.
    """
    if w.dtype != jnp.float32 or w.ndim != 2:
        return w
    w16 = w.astype(jnp.bfloat16)
    return w16 if bool(jnp.array_equal(w16.astype(jnp.float32), w)) else w


def pack_linears(module: nnx.Module) -> int:
    """In place: every float32 `Linear` of `module` whose weight holds only bfloat16 values
    stores it as bfloat16 and multiplies with the CPU kernel (`Linear.packed`). Norms, biases
    and embeddings stay as they are. Returns how many were packed."""
    count = 0
    for _, m in module.iter_modules():
        if isinstance(m, Linear) and not m.packed:
            w16 = bf16_if_exact(m.weight[...])
            if w16.dtype == jnp.bfloat16:
                m.weight = nnx.Param(w16)
                m.packed = True
                count += 1
    return count


def linear(in_features: int, out_features: int, *, bias: bool, dtype, rngs: nnx.Rngs) -> Linear:
    return Linear(in_features, out_features, bias=bias, dtype=dtype, rngs=rngs)


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
    if t == 1:
        return _attend_one_query(q, k, v, mask, scale)
    qg = q.reshape(b, t, kv_heads, n // kv_heads, h)
    scores = jnp.einsum("btkgh,bskh->bkgts", qg, k) * jnp.asarray(scale, q.dtype)
    scores = jnp.where(mask[:, None, None], scores.astype(jnp.float32), -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
    return out.reshape(b, t, n, h)


def _attend_one_query(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float) -> jax.Array:
    """`attend` for one query position (a decode step), as two plain matmuls per row.

    The per-head form is b x kv_heads tiny matmuls, which XLA's CPU backend runs one by one:
    at 16 rows over 512 cached slots that cost ~0.8 s per talker step. Here each row's query
    heads form a block-diagonal matrix `[N, K*H]`, so scores and the weighted sum are one
    matmul each over the row's flattened keys/values; the off-diagonal blocks multiply exact
    zeros (8x the flops, still ~2x faster: BENCHMARKS.md, "What moved the numbers").
    """
    b, _, n, h = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    g = n // kv_heads
    eye = jnp.eye(kv_heads, dtype=q.dtype)
    q_blocks = jnp.einsum("bkgh,kj->bkgjh", q.reshape(b, kv_heads, g, h), eye).reshape(b, n, kv_heads * h)
    scores = jnp.einsum("bnc,bsc->bns", q_blocks, k.reshape(b, s, kv_heads * h)) * jnp.asarray(scale, q.dtype)
    scores = jnp.where(mask, scores.astype(jnp.float32), -jnp.inf)          # mask [B, 1, S]
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    full = jnp.einsum("bns,bsc->bnc", probs, v.reshape(b, s, kv_heads * h)).reshape(b, kv_heads, g, kv_heads, h)
    out = jnp.diagonal(full, axis1=1, axis2=3)                               # [B, g, H, K]
    return jnp.transpose(out, (0, 3, 1, 2)).reshape(b, 1, n, h)


def causal_mask(query_slots: jax.Array, key_slots: jax.Array, window: int | None = None) -> jax.Array:
    """`[B, T, S]` visibility from slot indices: key <= query, and within `window` if given."""
    q = query_slots[:, :, None]
    k = key_slots[:, None, :]
    visible = k <= q
    if window is not None:
        visible &= k > q - window
    return visible
