"""The one-query attention path (decode steps) equals the general grouped-query path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
