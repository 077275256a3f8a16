"""A preallocated, fixed-shape key/value cache: one `[B, S_max, kv_heads, head_dim]` pair per layer.

Rows are independent: each call writes row b's new keys at its own slot `write_index[b]`,
and visibility is computed from slot indices (never by slicing), so every step has the same
shapes and compiles once. The cache is meant to be donated into the jitted step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    keys: tuple[jax.Array, ...]    # per layer [B, S, K, H]
    values: tuple[jax.Array, ...]  # per layer [B, S, K, H]

    @classmethod
    def zeros(cls, num_layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int,
              dtype=jnp.float32) -> KVCache:
        shape = (batch, max_len, kv_heads, head_dim)
        return cls(tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
                   tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)))

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[1]

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]


def write_rows(cache: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
    """Write `new [b, T, K, H]` into the first b rows of `cache [B, S, K, H]`, at slot `start[r]`
    of row r.

    The caller guarantees `start + T <= S` (dynamic_update_slice would clamp silently). With
    fewer rows than the cache (a step over the active rows only, `b < B`), one slot per row is
    scattered into the whole cache in place: slicing the first rows out and back would copy
    them every step.
    """
    b, t = new.shape[:2]
    if b < cache.shape[0]:
        if t != 1:
            raise ValueError(f"writing {t} slots into the first {b} of {cache.shape[0]} rows: only one slot")
        return cache.at[jnp.arange(b), start.astype(jnp.int32)].set(new[:, 0].astype(cache.dtype))

    def one(row, upd, s):
        return jax.lax.dynamic_update_slice(row, upd, (s, 0, 0))
    return jax.vmap(one)(cache, new.astype(cache.dtype), start.astype(jnp.int32))
