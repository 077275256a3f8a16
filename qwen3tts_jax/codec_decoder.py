"""The 12 Hz speech tokenizer's decoder: codes `[B, T, 16]` -> 24 kHz PCM `[B, T * 1920]`.

Pipeline (reference `Qwen3TTSTokenizerV2Decoder`): split RVQ lookup -> `pre_conv` (causal k3)
-> `pre_transformer` (8 layers, sliding window 72, layer scales, RoPE 1e4) -> `upsample`
(2 x [causal transposed conv, ConvNeXt]) -> `decoder` (conv k7, 4 SnakeBeta blocks with
transposed convs and dilated residual units, SnakeBeta, conv k7) -> clamp(-1, 1).
Attribute names mirror the reference modules; activations are channels-last `[B, T, C]`.

Every layer is causal with zero left padding and no lookahead, so the decoder is written
once, over "new frames plus carried left context" (`Context`): a one-pass `decode` is the
same code with zero context, and `streaming_decoder` carries the context between calls.

Jit and shapes: `decode` pads T up to a bucket (8, 12, 16, 24, 32, 48, ...; at most a third
extra) so varying lengths reuse a few executables; causality makes the padding harmless.
`decode_chunked` (the reference's `chunked_decode`, which its `decode` uses) runs each
300-frame chunk (plus 25 frames of left context) as a fixed `[B, 325]` pass, so any T > 300
reuses one executable. Memory of one pass grows with T (24 kHz conv activations, and the
attention is dense over the pass, masked to the window): for long audio use
`decode_chunked` (bounded: 325 frames a pass) or `streaming_decoder` (O(new frames)).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwen3tts_jax import buckets
from qwen3tts_jax.config import CodecDecoderConfig
from qwen3tts_jax.conv import CausalConvTranspose1d, Conv1d
from qwen3tts_jax.layers import RMSNorm, apply_rope, attend, linear, rope_tables

F32 = jnp.float32


# ----------------------------------------------------------------------------------------
# Carried left context


class Context:
    """Left context for one decoder pass over `frames` new code frames.

    Each causal layer calls `extend(x, n)`, which prepends the `n` time steps it needs from
    before this pass (zeros at an utterance start, as the reference's zero padding) and,
    when `track`, records the last `n` steps that are *final* for the next pass: row b has
    `n_valid[b]` real frames, the rest of the pass is padding and must not enter its state.
    `pos [B]` is the number of frames each row has already decoded (RoPE positions).
    """

    def __init__(self, frames: int, pos: jax.Array, state: tuple | None = None,
                 n_valid: jax.Array | None = None, track: bool = False):
        self.frames, self.pos, self.n_valid, self.track = frames, pos, n_valid, track
        self._state = iter(state) if state is not None else None
        self.new_state: list[jax.Array] = []

    def extend(self, x: jax.Array, n: int) -> jax.Array:
        """`[context (n steps), x]` along axis 1; `x [B, L, ...]` with L a multiple of frames."""
        if n == 0:
            return x
        if self._state is None:
            past = jnp.zeros((x.shape[0], n, *x.shape[2:]), x.dtype)
        else:
            past = next(self._state)
        z = jnp.concatenate([past, x], axis=1)
        if self.track:
            if self.n_valid is None:
                self.new_state.append(z[:, -n:])
            else:
                rate = x.shape[1] // self.frames
                starts = self.n_valid.astype(jnp.int32) * rate
                self.new_state.append(jax.vmap(
                    lambda row, s: jax.lax.dynamic_slice_in_dim(row, s, n, axis=0))(z, starts))
        return z


# ----------------------------------------------------------------------------------------
# Convolutions and activations


class CausalConvNet(nnx.Module):
    """Reference `CausalConvNet` (stride 1): zero left pad of `(k-1)*dilation`."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, *, dilation: int = 1,
                 groups: int = 1, rngs: nnx.Rngs):
        self.conv = Conv1d(in_ch, out_ch, kernel_size, dilation=dilation, groups=groups, rngs=rngs)

    def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:
        conv = self.conv
        z = ctx.extend(x, conv.effective_kernel_size - 1)
        if conv.groups > 1 and conv.groups == x.shape[-1] == conv.kernel.shape[-1]:
            # Depthwise: a few shifted multiplies beat a grouped conv on every backend.
            w = conv.kernel[...][:, 0, :]  # [K, C]
            t = x.shape[1]
            y = sum(z[:, k * conv.dilation: k * conv.dilation + t] * w[k]
                    for k in range(conv.kernel_size))
            return y + conv.bias[...]
        return conv(z)


class CausalTransConvNet(nnx.Module):
    """Reference `CausalTransConvNet`: transposed conv (k = m*s) with the last k-s samples cut,
    i.e. output block t = sum_m x[t-m] @ W[m]; the carried context is the last m-1 inputs.
    The kernel is stored in block layout `(m, in, s * out)` (converted once)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, *, rngs: nnx.Rngs):
        self.conv = CausalConvTranspose1d(in_ch, out_ch, kernel_size, stride=stride, rngs=rngs)

    def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:
        return self.conv(ctx.extend(x, self.conv.context))


class SnakeBeta(nnx.Module):
    """`x + sin^2(x * e^alpha) / (e^beta + 1e-9)`, alpha and beta stored in log scale."""

    def __init__(self, dim: int):
        self.alpha = nnx.Param(jnp.zeros((dim,), F32))
        self.beta = nnx.Param(jnp.zeros((dim,), F32))

    def __call__(self, x: jax.Array, ctx: Context | None = None) -> jax.Array:
        alpha = jnp.exp(self.alpha[...])
        inv_beta = 1.0 / (jnp.exp(self.beta[...]) + 1e-9)
        return x + inv_beta * jnp.square(jnp.sin(x * alpha))


class LayerNorm(nnx.Module):
    """torch `nn.LayerNorm` (biased variance, two-pass), params `weight` and `bias`."""

    def __init__(self, dim: int, eps: float):
        self.weight = nnx.Param(jnp.ones((dim,), F32))
        self.bias = nnx.Param(jnp.zeros((dim,), F32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.weight[...] + self.bias[...]


class ConvNeXtBlock(nnx.Module):
    """`x + gamma * pwconv2(gelu_erf(pwconv1(LN(dwconv(x)))))`, depthwise causal k7."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.dwconv = CausalConvNet(dim, dim, 7, groups=dim, rngs=rngs)
        self.norm = LayerNorm(dim, 1e-6)
        self.pwconv1 = linear(dim, 4 * dim, bias=True, dtype=F32, rngs=rngs)
        self.pwconv2 = linear(4 * dim, dim, bias=True, dtype=F32, rngs=rngs)
        self.gamma = nnx.Param(jnp.full((dim,), 1e-6, F32))

    def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:
        h = self.norm(self.dwconv(x, ctx))
        h = self.pwconv2(jax.nn.gelu(self.pwconv1(h), approximate=False))
        return x + self.gamma[...] * h


class ResidualUnit(nnx.Module):
    def __init__(self, dim: int, dilation: int, *, rngs: nnx.Rngs):
        self.act1 = SnakeBeta(dim)
        self.conv1 = CausalConvNet(dim, dim, 7, dilation=dilation, rngs=rngs)
        self.act2 = SnakeBeta(dim)
        self.conv2 = CausalConvNet(dim, dim, 1, rngs=rngs)

    def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:
        h = self.conv1(self.act1(x), ctx)
        return x + self.conv2(self.act2(h), ctx)


class DecoderBlock(nnx.Module):
    """SnakeBeta, causal transposed conv (k = 2r, stride r), residual units (dilation 1, 3, 9)."""

    def __init__(self, cfg: CodecDecoderConfig, index: int, *, rngs: nnx.Rngs):
        in_dim, out_dim = cfg.decoder_dim // 2 ** index, cfg.decoder_dim // 2 ** (index + 1)
        rate = cfg.upsample_rates[index]
        self.block = nnx.List([
            SnakeBeta(in_dim),
            CausalTransConvNet(in_dim, out_dim, 2 * rate, rate, rngs=rngs),
            *(ResidualUnit(out_dim, d, rngs=rngs) for d in (1, 3, 9)),
        ])

    def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:
        for layer in self.block:
            x = layer(x, ctx)
        return x


# ----------------------------------------------------------------------------------------
# Split residual vector quantizer (decode only)


class EuclideanCodebook(nnx.Module):
    """EMA accumulators as stored; the codebook is `embedding_sum / clamp(cluster_usage, 1e-5)`."""

    def __init__(self, dim: int, size: int, *, rngs: nnx.Rngs):
        self.embedding_sum = nnx.Param(jax.random.normal(rngs.params(), (size, dim), F32))
        self.cluster_usage = nnx.Param(jnp.ones((size,), F32))

    def decode(self, codes: jax.Array) -> jax.Array:
        # Gather first, then divide: the same per-element division as dividing the table.
        rows = jnp.take(self.embedding_sum[...], codes, axis=0)
        usage = jnp.take(self.cluster_usage[...], codes, axis=0)
        return rows / jnp.maximum(usage, 1e-5)[..., None]


class VectorQuantization(nnx.Module):
    def __init__(self, dim: int, size: int, *, rngs: nnx.Rngs):
        self._codebook = EuclideanCodebook(dim, size, rngs=rngs)


class ResidualVecQuantization(nnx.Module):
    def __init__(self, n_q: int, dim: int, size: int, *, rngs: nnx.Rngs):
        self.layers = nnx.List([VectorQuantization(dim, size, rngs=rngs) for _ in range(n_q)])


class ResidualVectorQuantizer(nnx.Module):
    """`output_proj(sum_j codebook_j[codes_j])`; the encoder-side `input_proj` is not needed."""

    def __init__(self, n_q: int, dim: int, out_dim: int, size: int, *, rngs: nnx.Rngs):
        self.vq = ResidualVecQuantization(n_q, dim, size, rngs=rngs)
        self.output_proj = Conv1d(dim, out_dim, 1, bias=False, rngs=rngs)

    def decode(self, codes: jax.Array) -> jax.Array:
        """`codes [B, T, n_q]` -> `[B, T, out_dim]`."""
        total = None
        for j, layer in enumerate(self.vq.layers):
            q = layer._codebook.decode(codes[..., j])
            total = q if total is None else total + q
        return total @ self.output_proj.kernel[...][0]


class SplitResidualVectorQuantizer(nnx.Module):
    def __init__(self, cfg: CodecDecoderConfig, *, rngs: nnx.Rngs):
        dim, n_first = cfg.codebook_dim // 2, 1
        self.n_q_semantic = n_first
        self.rvq_first = ResidualVectorQuantizer(n_first, dim, cfg.codebook_dim, cfg.codebook_size,
                                                 rngs=rngs)
        self.rvq_rest = ResidualVectorQuantizer(cfg.num_quantizers - n_first, dim, cfg.codebook_dim,
                                                cfg.codebook_size, rngs=rngs)

    def decode(self, codes: jax.Array) -> jax.Array:
        n = self.n_q_semantic
        return self.rvq_first.decode(codes[..., :n]) + self.rvq_rest.decode(codes[..., n:])


# ----------------------------------------------------------------------------------------
# Pre-transformer


class DecoderAttention(nnx.Module):
    def __init__(self, cfg: CodecDecoderConfig, *, rngs: nnx.Rngs):
        h, n, k, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = linear(h, n * d, bias=False, dtype=F32, rngs=rngs)
        self.k_proj = linear(h, k * d, bias=False, dtype=F32, rngs=rngs)
        self.v_proj = linear(h, k * d, bias=False, dtype=F32, rngs=rngs)
        self.o_proj = linear(n * d, h, bias=False, dtype=F32, rngs=rngs)
        self.num_heads, self.num_kv_heads, self.head_dim = n, k, d
        self.window = cfg.sliding_window

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, ctx: Context) -> jax.Array:
        b, t, _ = x.shape
        q = apply_rope(self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        past = self.window - 1  # keys before the pass that any query here can still see
        k, v = ctx.extend(k, past), ctx.extend(v, past)  # [B, past + T, K, H], post-RoPE
        q_pos = ctx.pos[:, None] + jnp.arange(t, dtype=jnp.int32)  # [B, T]
        k_pos = ctx.pos[:, None] - past + jnp.arange(past + t, dtype=jnp.int32)  # [B, past + T]
        qp, kp = q_pos[:, :, None], k_pos[:, None, :]
        mask = (kp <= qp) & (kp > qp - self.window) & (kp >= 0)
        out = attend(q, k, v, mask, self.head_dim ** -0.5)
        return self.o_proj(out.reshape(b, t, -1))


class DecoderMlp(nnx.Module):
    def __init__(self, cfg: CodecDecoderConfig, *, rngs: nnx.Rngs):
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = linear(h, i, bias=False, dtype=F32, rngs=rngs)
        self.up_proj = linear(h, i, bias=False, dtype=F32, rngs=rngs)
        self.down_proj = linear(i, h, bias=False, dtype=F32, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class LayerScale(nnx.Module):
    def __init__(self, cfg: CodecDecoderConfig):
        self.scale = nnx.Param(jnp.full((cfg.hidden_size,), cfg.layer_scale_initial_scale, F32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.scale[...] * x


class DecoderTransformerLayer(nnx.Module):
    def __init__(self, cfg: CodecDecoderConfig, *, rngs: nnx.Rngs):
        self.self_attn = DecoderAttention(cfg, rngs=rngs)
        self.mlp = DecoderMlp(cfg, rngs=rngs)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn_layer_scale = LayerScale(cfg)
        self.mlp_layer_scale = LayerScale(cfg)

    def __call__(self, x, cos, sin, ctx: Context):
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x), cos, sin, ctx))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class DecoderTransformerModel(nnx.Module):
    def __init__(self, cfg: CodecDecoderConfig, *, rngs: nnx.Rngs):
        self.input_proj = linear(cfg.latent_dim, cfg.hidden_size, bias=True, dtype=F32, rngs=rngs)
        self.layers = nnx.List([DecoderTransformerLayer(cfg, rngs=rngs)
                                for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.output_proj = linear(cfg.hidden_size, cfg.latent_dim, bias=True, dtype=F32, rngs=rngs)
        self.head_dim, self.rope_theta = cfg.head_dim, cfg.rope_theta

    def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:
        t = x.shape[1]
        positions = ctx.pos[:, None] + jnp.arange(t, dtype=jnp.int32)  # [B, T]
        cos, sin = rope_tables(positions, self.head_dim, self.rope_theta, F32)
        x = self.input_proj(x)
        for layer in self.layers:
            x = layer(x, cos, sin, ctx)
        return self.output_proj(self.norm(x))


# ----------------------------------------------------------------------------------------
# The decoder


class CodecDecoder(nnx.Module):
    """Reference `Qwen3TTSTokenizerV2Decoder`, always float32."""

    def __init__(self, cfg: CodecDecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.quantizer = SplitResidualVectorQuantizer(cfg, rngs=rngs)
        self.pre_conv = CausalConvNet(cfg.codebook_dim, cfg.latent_dim, 3, rngs=rngs)
        self.pre_transformer = DecoderTransformerModel(cfg, rngs=rngs)
        self.upsample = nnx.List([
            nnx.List([CausalTransConvNet(cfg.latent_dim, cfg.latent_dim, f, f, rngs=rngs),
                      ConvNeXtBlock(cfg.latent_dim, rngs=rngs)])
            for f in cfg.upsampling_ratios])
        out_dim = cfg.decoder_dim // 2 ** len(cfg.upsample_rates)
        self.decoder = nnx.List([
            CausalConvNet(cfg.latent_dim, cfg.decoder_dim, 7, rngs=rngs),
            *(DecoderBlock(cfg, i, rngs=rngs) for i in range(len(cfg.upsample_rates))),
            SnakeBeta(out_dim),
            CausalConvNet(out_dim, 1, 7, rngs=rngs),
        ])

    def __call__(self, codes: jax.Array, ctx: Context) -> jax.Array:
        """`codes [B, T, num_quantizers]` (valid ids) -> PCM `[B, T * samples_per_frame]`."""
        with jax.named_scope("rvq"):
            h = self.quantizer.decode(codes)  # [B, T, codebook_dim]
        with jax.named_scope("pre_conv"):
            h = self.pre_conv(h, ctx)  # [B, T, latent]
        with jax.named_scope("pre_transformer"):
            h = self.pre_transformer(h, ctx)
        with jax.named_scope("upsample"):
            for up, convnext in self.upsample:
                h = convnext(up(h, ctx), ctx)
        with jax.named_scope("decoder"):
            for layer in self.decoder:
                h = layer(h, ctx)  # ends [B, T * samples_per_frame, 1]
        return jnp.clip(h[..., 0], -1.0, 1.0)


# ----------------------------------------------------------------------------------------
# Offline decoding


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, codes: jax.Array) -> jax.Array:
    module = nnx.merge(graphdef, params)
    b, t, _ = codes.shape
    return module(codes, Context(t, jnp.zeros((b,), jnp.int32)))



def check_codes(codes, cfg: CodecDecoderConfig, *, allow_padding: bool) -> np.ndarray:
    """Validate `codes [B, T, num_quantizers]` on the host; -1 marks padding when allowed."""
    a = np.asarray(codes)
    if a.ndim != 3 or a.shape[-1] != cfg.num_quantizers:
        raise ValueError(f"codes must have shape [batch, frames, {cfg.num_quantizers}], "
                         f"got {tuple(a.shape)}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {a.dtype}")
    low = -1 if allow_padding else 0
    if a.size and (a.min() < low or a.max() >= cfg.codebook_size):
        raise ValueError(f"codes out of range: found values in [{a.min()}, {a.max()}], "
                         f"allowed [{low}, {cfg.codebook_size - 1}]"
                         + (" (-1 = padding)" if allow_padding else ""))
    return a.astype(np.int32)


def _prepare(module: CodecDecoder, codes) -> tuple[np.ndarray, np.ndarray]:
    a = check_codes(codes, module.cfg, allow_padding=True)
    lengths = (a[..., 0] > -1).sum(axis=1) * module.cfg.samples_per_frame
    return np.maximum(a, 0), lengths


def decode(module: CodecDecoder, codes) -> jax.Array:
    """One causal pass over all frames: `codes [B, T, 16]` -> PCM `[B, T * 1920]` (float32).

    This is the reference `forward` (not its chunked `decode`); -1 entries are clamped to 0
    as the reference does (see `valid_lengths` / `decode_to_list` for trimming).
    """
    a, _ = _prepare(module, codes)
    return _decode_padded(module, a, buckets.codec_frames(a.shape[1]))


def _decode_padded(module: CodecDecoder, a: np.ndarray, length: int) -> jax.Array:
    """One pass over valid codes `a [B, T, Q]` right-padded to `length` frames."""
    b, t, q = a.shape
    if t == 0:
        return jnp.zeros((b, 0), F32)
    padded = np.zeros((b, length, q), np.int32)
    padded[:, :t] = a
    graphdef, params = nnx.split(module)
    return _forward(graphdef, params, jnp.asarray(padded))[:, :t * module.cfg.samples_per_frame]


def decode_chunked(module: CodecDecoder, codes, chunk_size: int = 300,
                   left_context_size: int = 25) -> jax.Array:
    """The reference `chunked_decode`: independent passes over `chunk_size` frames with
    `min(left_context_size, start)` frames of left context (positions restart at 0, zero conv
    padding, per-chunk clamp), context samples dropped, chunks concatenated. -> `[B, T * 1920]`.
    """
    a, _ = _prepare(module, codes)
    b, t, q = a.shape
    spf = module.cfg.samples_per_frame
    if t <= chunk_size:  # one chunk: one pass, padded no further than a chunk
        return _decode_padded(module, a, min(buckets.codec_frames(t), chunk_size))
    starts = range(0, t, chunk_size)
    row = max(min(left_context_size, s) for s in starts) + chunk_size
    graphdef, params = nnx.split(module)
    pieces = []
    for s in starts:
        ctx = min(left_context_size, s)
        n = min(chunk_size, t - s)
        chunk = np.zeros((b, row, q), np.int32)  # right padding: causal, so it never leaks back
        chunk[:, :ctx + n] = a[:, s - ctx:s + n]
        wav = _forward(graphdef, params, jnp.asarray(chunk))
        pieces.append(wav[:, ctx * spf:(ctx + n) * spf])
    return jnp.concatenate(pieces, axis=1)


def valid_lengths(codes, cfg: CodecDecoderConfig) -> np.ndarray:
    """Samples per row, as the reference: frames whose first code is not -1, times 1920."""
    a = check_codes(codes, cfg, allow_padding=True)
    return (a[..., 0] > -1).sum(axis=1) * cfg.samples_per_frame


def decode_to_list(module: CodecDecoder, codes) -> list[np.ndarray]:
    """The reference `Qwen3TTSTokenizerV2Model.decode`: -1-padded codes -> trimmed waveforms."""
    a, lengths = _prepare(module, codes)
    wav = np.asarray(decode_chunked(module, a))
    return [wav[i, :n] for i, n in enumerate(lengths)]
