"""CPU fast paths equal the plain computation: one-query attention (decode steps) and the
rows-as-columns Linear dot (a few rows)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qwen3tts_jax import layers
from qwen3tts_jax.layers import attend


@pytest.mark.parametrize("kv_heads", [1, 2, 8])
@pytest.mark.parametrize("seed", [0, 1])
def test_one_query_attention_equals_the_general_path(kv_heads, seed):
    b, s, n, h = 3, 37, 8, 16
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (b, 1, n, h))
    k = jax.random.normal(keys[1], (b, s, kv_heads, h))
    v = jax.random.normal(keys[2], (b, s, kv_heads, h))
    mask = jax.random.bernoulli(keys[3], 0.6, (b, 1, s)).at[:, :, 0].set(True)
    one = attend(q, k, v, mask, h ** -0.5)
    # The same query twice takes the general (t > 1) einsum path; its first position is the reference.
    general = attend(jnp.concatenate([q, q], axis=1), k, v, jnp.concatenate([mask, mask], axis=1), h ** -0.5)[:, :1]
    err = float(jnp.linalg.norm(one - general) / jnp.linalg.norm(general))
    assert err < 1e-6, err
    # Masked slots are invisible: changing their values changes nothing.
    v2 = jnp.where(mask[:, 0, :, None, None], v, 1e3)
    np.testing.assert_allclose(attend(q, k, v2, mask, h ** -0.5), one, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1, 96), (2, 1, 96), (16, 1, 96), (3, 5, 96), (1, 300, 96)])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_rows_as_columns_equals_the_plain_dot(shape, bias):
    """Whatever path `Linear` takes for this many rows, it computes `x @ W.T + b` (float64 numpy)."""
    lin = layers.Linear(96, 40, bias=bias, dtype=jnp.float32, rngs=nnx.Rngs(0))
    if bias:
        lin.bias[...] = jax.random.normal(jax.random.key(1), (40,))
    x = jax.random.normal(jax.random.key(2), shape)
    want = np.asarray(x, np.float64) @ np.asarray(lin.weight[...], np.float64).T
    if bias:
        want = want + np.asarray(lin.bias[...], np.float64)
    got = jax.jit(lambda x: lin(x))(x)
    assert got.shape == (*shape[:-1], 40)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    rows = int(np.prod(shape[:-1]))
    uses_columns = layers.COLUMN_DOT_ROWS[0] <= rows <= layers.COLUMN_DOT_ROWS[1]
    text = jax.jit(lambda x: lin(x)).lower(x).as_text()
    assert ("optimization_barrier" in text) == (uses_columns and jax.default_backend() == "cpu")
