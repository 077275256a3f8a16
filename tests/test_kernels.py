"""The CPU bfloat16-weight matmul kernel and the lossless weight packing that uses it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qwen3tts_jax import kernels, layers


def test_kernel_builds_on_this_machine():
    # CI machines have a C++ compiler; a broken build would silently fall back to the slow path.
    assert kernels.available(), "the CPU kernel failed to build: see the warning logged above"


# M: one decode row, register blocks of 1-8 rows and their remainders, a prefill-sized block.
# K: multiples of the 32-weight chunk, a tail, shorter than a chunk. N*K >= 2**18 splits threads.
@pytest.mark.parametrize("m", [1, 2, 3, 8, 9, 17, 70])
@pytest.mark.parametrize("k,n", [(64, 7), (100, 130), (31, 5), (1024, 600), (2048, 3)])
def test_bf16_matmul_equals_a_float64_matmul(m, k, n):
    rng = np.random.default_rng(m * 1000 + k + n)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = jnp.asarray(rng.standard_normal((n, k)), jnp.bfloat16)
    got = np.asarray(jax.jit(kernels.bf16_matmul)(x, w))
    want = x.astype(np.float64) @ np.asarray(w.astype(jnp.float32), np.float64).T
    assert got.shape == (m, n) and got.dtype == np.float32
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-6


def test_bf16_matmul_keeps_leading_axes_and_matches_the_xla_path(monkeypatch):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 3, 96)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((40, 96)), jnp.bfloat16)
    fast = np.asarray(kernels.bf16_matmul(x, w))
    monkeypatch.setattr(kernels, "available", lambda: False)
    plain = np.asarray(kernels.bf16_matmul(x, w))
    assert fast.shape == plain.shape == (2, 3, 40)
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5)


class _Net(nnx.Module):
    def __init__(self, rngs):
        self.a = layers.linear(64, 96, bias=True, dtype=jnp.float32, rngs=rngs)
        self.b = layers.linear(96, 32, bias=False, dtype=jnp.float32, rngs=rngs)
        self.norm = layers.RMSNorm(96, 1e-6)

    def __call__(self, x):
        return self.b(self.norm(jax.nn.silu(self.a(x))))


def test_packing_is_lossless_and_only_takes_bfloat16_exact_linear_weights():
    net = _Net(nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(2).standard_normal((5, 64)), jnp.float32)
    assert layers.pack_linears(net) == 0  # random float32 weights are not bfloat16 values
    assert all(w.dtype == jnp.float32 for w in jax.tree.leaves(nnx.state(net)))
    assert not net.a.packed
    net.a.weight = nnx.Param(net.a.weight[...].astype(jnp.bfloat16).astype(jnp.float32))
    net.b.weight = nnx.Param(net.b.weight[...].astype(jnp.bfloat16).astype(jnp.float32))
    net.norm.weight = nnx.Param(jnp.full((96,), 0.5))  # exact in bfloat16, but not a Linear weight
    before = np.asarray(net(x))
    packed = nnx.merge(*nnx.split(net))
    assert layers.pack_linears(packed) == 2
    assert packed.a.packed and packed.b.packed and not net.a.packed  # a copy was packed, not `net`
    assert packed.a.weight[...].dtype == packed.b.weight[...].dtype == jnp.bfloat16
    ops = str(jax.make_jaxpr(lambda x: packed(x))(x))
    assert ops.count("ffi_call") == 2 and "dot_general" not in ops  # the kernel, explicitly
    assert packed.a.bias[...].dtype == packed.norm.weight[...].dtype == jnp.float32
    after = np.asarray(jax.jit(lambda x: packed(x))(x))
    assert after.dtype == np.float32
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
