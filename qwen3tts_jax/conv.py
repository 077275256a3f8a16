"""Channels-last 1-D convolutions with torch-compatible weights, shared by the codecs.

Activations are `[B, T, C]` (NWC). Kernels use the converter's layouts:
`Conv1d.kernel (K, I/groups, O)` (torch `(O, I/groups, K)` permuted by `CONV1D`) and
`ConvTranspose1d.kernel (K, I, O)` (torch `(I, O, K)` permuted by `CONV_TRANSPOSE1D`).
Padding is never implicit: callers pad (causally, with the mode they need) or pass
explicit `(left, right)` amounts, so streaming code can substitute carried context.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_DIMS = ("NWC", "WIO", "NWC")


def pad_time(x: jax.Array, left: int, right: int, mode: str = "constant") -> jax.Array:
    """Pad the time axis of `x [B, T, C]`; `mode` is a `jnp.pad` mode ("constant" = zeros,
    "edge" = torch "replicate", "reflect")."""
    if left == 0 and right == 0:
        return x
    return jnp.pad(x, ((0, 0), (left, right), (0, 0)), mode=mode)


def conv1d(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, *, stride: int = 1,
           dilation: int = 1, groups: int = 1, padding: tuple[int, int] = (0, 0)) -> jax.Array:
    """torch `F.conv1d` on `x [B, T, I]` with `kernel (K, I/groups, O)`, zero `padding`."""
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=(stride,), padding=(tuple(padding),),
        rhs_dilation=(dilation,), dimension_numbers=_DIMS, feature_group_count=groups)
    return y if bias is None else y + bias.astype(y.dtype)


def conv_transpose1d(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, *,
                     stride: int = 1) -> jax.Array:
    """torch `F.conv_transpose1d` (no padding) on `x [B, T, I]`, `kernel (K, I, O)`.

    Output length `(T - 1) * stride + K`.
    """
    k = kernel.shape[0]
    y = jax.lax.conv_general_dilated(
        x, jnp.flip(kernel, 0).astype(x.dtype), window_strides=(1,), padding=((k - 1, k - 1),),
        lhs_dilation=(stride,), dimension_numbers=_DIMS)
    return y if bias is None else y + bias.astype(y.dtype)


def blocks_kernel_from_torch(weight: np.ndarray, stride: int) -> np.ndarray:
    """torch ConvTranspose1d weight `(I, O, K)`, `K = M * stride` -> block kernel `(M, I, stride, O)`.

    `block[M-1-m, i, j, o] = weight[i, o, m*stride + j]`: the layout in which a causal
    transposed conv is one plain valid conv (`CausalConvTranspose1d`; `(M, I, stride * O)`
    is a free reshape of it), laid out once at conversion instead of on every call.
    """
    i, o, k = weight.shape
    if k % stride:
        raise ValueError(f"kernel size {k} is not a multiple of stride {stride}")
    m = k // stride
    return np.ascontiguousarray(weight.reshape(i, o, m, stride).transpose(2, 0, 3, 1)[::-1])


def blocks_kernel_to_torch(block: np.ndarray) -> np.ndarray:
    """Inverse of `blocks_kernel_from_torch`: `(M, I, stride, O)` -> torch `(I, O, M * stride)`."""
    m, i, s, o = block.shape
    return np.ascontiguousarray(block[::-1].transpose(1, 3, 0, 2).reshape(i, o, m * s))


def _uniform(rngs: nnx.Rngs, shape, fan_in: int, dtype):
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return jax.random.uniform(rngs.params(), shape, dtype, -bound, bound)


class Conv1d(nnx.Module):
    """torch `nn.Conv1d` weights, channels-last; `__call__` pads only as told."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 dilation: int = 1, groups: int = 1, bias: bool = True, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        fan_in = in_channels // groups * kernel_size
        self.kernel = nnx.Param(_uniform(rngs, (kernel_size, in_channels // groups, out_channels),
                                         fan_in, dtype))
        self.bias = nnx.Param(_uniform(rngs, (out_channels,), fan_in, dtype)) if bias else None
        self.kernel_size, self.stride, self.dilation, self.groups = kernel_size, stride, dilation, groups

    @property
    def effective_kernel_size(self) -> int:
        return (self.kernel_size - 1) * self.dilation + 1

    def __call__(self, x: jax.Array, padding: tuple[int, int] = (0, 0)) -> jax.Array:
        return conv1d(x, self.kernel[...], None if self.bias is None else self.bias[...],
                      stride=self.stride, dilation=self.dilation, groups=self.groups,
                      padding=padding)


class ConvTranspose1d(nnx.Module):
    """torch `nn.ConvTranspose1d` weights (groups=1, no padding), channels-last."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 bias: bool = True, dtype=jnp.float32, rngs: nnx.Rngs):
        fan_in = out_channels * kernel_size  # torch's fan-in convention for transposed convs
        self.kernel = nnx.Param(_uniform(rngs, (kernel_size, in_channels, out_channels), fan_in, dtype))
        self.bias = nnx.Param(_uniform(rngs, (out_channels,), fan_in, dtype)) if bias else None
        self.kernel_size, self.stride = kernel_size, stride

    def __call__(self, x: jax.Array) -> jax.Array:
        """torch's full output, length `(T - 1) * stride + K`."""
        return conv_transpose1d(x, self.kernel[...], None if self.bias is None else self.bias[...],
                                stride=self.stride)


class CausalConvTranspose1d(nnx.Module):
    """torch's transposed conv (kernel `M * stride`) with the last `kernel - stride` samples cut.

    Output block t (samples `t*s .. t*s+s-1`) is `sum_m x[t - m] @ W[m*s : (m+1)*s]`, so with
    the block kernel `(M, I, stride, O)` (`blocks_kernel_from_torch`) it is one valid conv
    and a reshape, with no zero-stuffing and no per-call weight relayout. `__call__(x [B, T, I])`
    expects `M - 1` frames of left context at the start of `x` (zeros at a causal start) and
    returns `[B, (T - M + 1) * stride, O]`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int,
                 bias: bool = True, dtype=jnp.float32, rngs: nnx.Rngs):
        if kernel_size % stride:
            raise ValueError(f"kernel size {kernel_size} is not a multiple of stride {stride}")
        fan_in = out_channels * kernel_size
        self.kernel = nnx.Param(_uniform(rngs, (kernel_size // stride, in_channels, stride, out_channels),
                                         fan_in, dtype))
        self.bias = nnx.Param(_uniform(rngs, (out_channels,), fan_in, dtype)) if bias else None
        self.kernel_size, self.stride, self.out_channels = kernel_size, stride, out_channels

    @property
    def context(self) -> int:
        """Input frames of left context each output block needs."""
        return self.kernel_size // self.stride - 1

    def __call__(self, x: jax.Array) -> jax.Array:
        m, i, s, o = self.kernel.shape
        kernel = self.kernel[...].reshape(m, i, s * o).astype(x.dtype)  # contiguous: free
        y = jax.lax.conv_general_dilated(x, kernel, window_strides=(1,), padding=((0, 0),),
                                         dimension_numbers=_DIMS)
        b, t, _ = y.shape
        y = y.reshape(b, t * self.stride, self.out_channels)
        return y if self.bias is None else y + self.bias[...].astype(y.dtype)
