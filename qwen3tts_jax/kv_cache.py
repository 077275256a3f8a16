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
    """Write `new [B, T, K, H]` into `cache [B, S, K, H]` at slot `start[b]` of each row.

    The caller guarantees `start + T <= S` (dynamic_update_slice would clamp silently).
    """
    def one(row, upd, s):
        return jax.lax.dynamic_update_slice(row, upd, (s, 0, 0))
    return jax.vmap(one)(cache, new.astype(cache.dtype), start.astype(jnp.int32))
