"""The speech tokenizer's encoder (Mimi): 24 kHz PCM -> codes `[T, 16]` at 12.5 Hz.

Chain (REFERENCE-FACTS 2.6 and 4 "Encode"): SEANet convs with ELU (25 Hz, `hidden_size`),
a pre-norm transformer (LayerNorm with bias, layer scales, exact GELU, RoPE theta 1e4, full
causal attention: the reference runs sdpa, whose mask ignores `sliding_window`), a
replicate-padded stride-2 downsample (12.5 Hz), then a split RVQ whose semantic and acoustic
halves both quantize the *same* latent, each through its own `input_proj`.

Only the first `valid_num_quantizers` codes (semantic + acoustic 0..14) are ever used, so
only those codebooks exist here; the rest are ignored by the converter table.

Variable-length inputs: every conv masks positions at or past the row's valid length before
padding, so a right-padded buffer gives bit-for-bit the same real frames as the reference
run on the unpadded clip. That matters for the last frame: the reference completes it with
zero "extra padding" at every strided conv (replicate at the downsample), not with the conv
outputs of trailing silence. `encode` pads to length buckets to bound recompiles.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwen3tts_jax import buckets
from qwen3tts_jax.config import CodecEncoderConfig
from qwen3tts_jax.conv import Conv1d, pad_time
from qwen3tts_jax.layers import apply_rope, attend, causal_mask, linear, rope_tables

# MimiEuclideanCodebook.epsilon: cluster_usage is clamped at this before dividing.
_USAGE_EPS = 1e-5


def _mask_time(x: jax.Array, lengths: jax.Array, replicate: bool) -> jax.Array:
    """Positions `>= lengths[b]` of `x [B, T, C]` become 0, or the last valid frame (`replicate`)."""
    t = jnp.arange(x.shape[1], dtype=jnp.int32)[None, :]  # [1, T]
    if replicate:
        idx = jnp.minimum(t, lengths[:, None] - 1)  # [B, T]
        return jnp.take_along_axis(x, idx[:, :, None], axis=1)
    return jnp.where((t < lengths[:, None])[:, :, None], x, jnp.zeros((), x.dtype))


class ELU(nnx.Module):
    """Weightless; a module only so list indices mirror the reference's `nn.ModuleList`."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.elu(x)


class MimiConv1d(nnx.Module):
    """`MimiConv1d` (causal): left pad `k_eff - stride`, right "extra padding" to finish the last frame."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 dilation: int = 1, bias: bool = True, replicate: bool = False, rngs: nnx.Rngs):
        self.conv = Conv1d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation,
                           bias=bias, rngs=rngs)
        self.stride = stride
        self.kernel_eff = (kernel_size - 1) * dilation + 1
        self.padding_total = self.kernel_eff - stride
        self.replicate = replicate

    def extra_padding(self, length: int) -> int:
        """MimiConv1d._get_extra_padding_for_conv1d for a static `length`."""
        n_frames = -(-(length - self.kernel_eff + self.padding_total) // self.stride)
        return n_frames * self.stride + self.kernel_eff - self.padding_total - length

    def out_length(self, lengths: jax.Array) -> jax.Array:
        return -(-lengths // self.stride)

    def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`x [B, T, I]`, valid `lengths [B]` -> `(y [B, ceil(T/s), O], ceil(lengths/s))`."""
        x = _mask_time(x, lengths, self.replicate)
        mode = "edge" if self.replicate else "constant"
        x = pad_time(x, self.padding_total, self.extra_padding(x.shape[1]), mode)
        return self.conv(x), self.out_length(lengths)


class MimiResnetBlock(nnx.Module):
    """`x + conv(ELU(conv(ELU(x))))`; `block.1` and `block.3` are the convs (identity shortcut)."""

    def __init__(self, cfg: CodecEncoderConfig, dim: int, dilations: tuple[int, int], *, rngs: nnx.Rngs):
        hidden = dim // cfg.compress
        self.block = nnx.List([
            ELU(),
            MimiConv1d(dim, hidden, cfg.residual_kernel_size, dilation=dilations[0], rngs=rngs),
            ELU(),
            MimiConv1d(hidden, dim, 1, dilation=dilations[1], rngs=rngs),
        ])

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        h = x
        for layer in self.block:
            h = layer(h) if isinstance(layer, ELU) else layer(h, lengths)[0]
        return x + h


class MimiEncoder(nnx.Module):
    """SEANet: conv, then per ratio (reversed) [ResBlock]*n, ELU, strided conv; ELU, last conv."""

    def __init__(self, cfg: CodecEncoderConfig, *, rngs: nnx.Rngs):
        layers: list[nnx.Module] = [MimiConv1d(cfg.audio_channels, cfg.num_filters, cfg.kernel_size,
                                               rngs=rngs)]
        scale = 1
        for ratio in reversed(cfg.upsampling_ratios):
            dim = scale * cfg.num_filters
            for j in range(cfg.num_residual_layers):
                layers.append(MimiResnetBlock(cfg, dim, (cfg.dilation_growth_rate ** j, 1), rngs=rngs))
            layers.append(ELU())
            layers.append(MimiConv1d(dim, dim * 2, ratio * 2, stride=ratio, rngs=rngs))
            scale *= 2
        layers.append(ELU())
        layers.append(MimiConv1d(scale * cfg.num_filters, cfg.hidden_size, cfg.last_kernel_size,
                                 rngs=rngs))
        self.layers = nnx.List(layers)

    def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        for layer in self.layers:
            if isinstance(layer, ELU):
                x = layer(x)
            elif isinstance(layer, MimiResnetBlock):
                x = layer(x, lengths)
            else:
                x, lengths = layer(x, lengths)
        return x, lengths


class LayerScale(nnx.Module):
    def __init__(self, dim: int, initial: float):
        self.scale = nnx.Param(jnp.full((dim,), initial, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.scale[...] * x


class MimiAttention(nnx.Module):
    def __init__(self, cfg: CodecEncoderConfig, *, rngs: nnx.Rngs):
        h, n, k, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = linear(h, n * d, bias=False, dtype=jnp.float32, rngs=rngs)
        self.k_proj = linear(h, k * d, bias=False, dtype=jnp.float32, rngs=rngs)
        self.v_proj = linear(h, k * d, bias=False, dtype=jnp.float32, rngs=rngs)
        self.o_proj = linear(n * d, h, bias=False, dtype=jnp.float32, rngs=rngs)
        self.num_heads, self.num_kv_heads, self.head_dim = n, k, d

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array) -> jax.Array:
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attend(q, k, v, mask, self.head_dim ** -0.5)  # [B, T, N, H]
        return self.o_proj(out.reshape(b, t, -1))


class MimiMLP(nnx.Module):
    def __init__(self, cfg: CodecEncoderConfig, *, rngs: nnx.Rngs):
        self.fc1 = linear(cfg.hidden_size, cfg.intermediate_size, bias=False, dtype=jnp.float32, rngs=rngs)
        self.fc2 = linear(cfg.intermediate_size, cfg.hidden_size, bias=False, dtype=jnp.float32, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


def _layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance, like torch (the fast E[x^2]-E[x]^2 form loses digits).
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, rngs=rngs)


class MimiTransformerLayer(nnx.Module):
    def __init__(self, cfg: CodecEncoderConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = _layer_norm(cfg.hidden_size, cfg.norm_eps, rngs)
        self.self_attn = MimiAttention(cfg, rngs=rngs)
        self.self_attn_layer_scale = LayerScale(cfg.hidden_size, cfg.layer_scale_initial_scale)
        self.post_attention_layernorm = _layer_norm(cfg.hidden_size, cfg.norm_eps, rngs)
        self.mlp = MimiMLP(cfg, rngs=rngs)
        self.mlp_layer_scale = LayerScale(cfg.hidden_size, cfg.layer_scale_initial_scale)

    def __call__(self, x, cos, sin, mask):
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x), cos, sin, mask))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class MimiTransformer(nnx.Module):
    """Full causal attention over positions 0..T-1; no final norm."""

    def __init__(self, cfg: CodecEncoderConfig, *, rngs: nnx.Rngs):
        self.layers = nnx.List([MimiTransformerLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.head_dim, self.rope_theta = cfg.head_dim, cfg.rope_theta

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, _ = x.shape
        pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        cos, sin = rope_tables(pos, self.head_dim, self.rope_theta, x.dtype)
        mask = causal_mask(pos, pos)  # padding sits after the real frames: causality hides it
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return x


class EuclideanCodebook(nnx.Module):
    """`embed_sum` and `cluster_usage` kept as stored; the codebook is their clamped ratio."""

    def __init__(self, cfg: CodecEncoderConfig, *, rngs: nnx.Rngs):
        # The reference initialises embed_sum to zeros; random here so a fresh module is not degenerate.
        self.embed_sum = nnx.Param(jax.random.normal(rngs.params(), (cfg.codebook_size, cfg.codebook_dim)))
        self.cluster_usage = nnx.Param(jnp.ones((cfg.codebook_size,), jnp.float32))

    def embed(self) -> jax.Array:
        usage = jnp.maximum(self.cluster_usage[...], _USAGE_EPS)
        return self.embed_sum[...] / usage[:, None]  # [K, D]


def cdist_argmin(x: jax.Array, embed: jax.Array) -> jax.Array:
    """Index of the nearest row of `embed [K, D]` for each `x [N, D]`, ties to the lowest index.

    Mirrors torch.cdist(p=2)'s matmul path (taken when either side has > 25 rows): one
    matmul of `[-2x, |x|^2, 1]` with `[e, 1, |e|^2]`, clamp at 0, sqrt. The sqrt is kept
    because it can merge nearly equal squared distances into exact ties, as in torch.
    """
    x_norm = jnp.sum(x * x, axis=-1, keepdims=True)
    e_norm = jnp.sum(embed * embed, axis=-1, keepdims=True)
    xa = jnp.concatenate([-2.0 * x, x_norm, jnp.ones_like(x_norm)], axis=-1)
    ea = jnp.concatenate([embed, jnp.ones_like(e_norm), e_norm], axis=-1)
    d2 = jnp.matmul(xa, ea.T, precision=jax.lax.Precision.HIGHEST)
    dist = jnp.sqrt(jnp.maximum(d2, 0.0))
    return jnp.argmin(dist, axis=-1).astype(jnp.int32)


class VectorQuantization(nnx.Module):
    def __init__(self, cfg: CodecEncoderConfig, *, rngs: nnx.Rngs):
        self.codebook = EuclideanCodebook(cfg, rngs=rngs)


class ResidualVectorQuantizer(nnx.Module):
    def __init__(self, cfg: CodecEncoderConfig, num_layers: int, *, rngs: nnx.Rngs):
        self.input_proj = (Conv1d(cfg.hidden_size, cfg.vector_quantization_hidden_dimension, 1,
                                  bias=False, rngs=rngs)
                           if cfg.vector_quantization_hidden_dimension != cfg.hidden_size else None)
        self.layers = nnx.List([VectorQuantization(cfg, rngs=rngs) for _ in range(num_layers)])

    def __call__(self, z: jax.Array) -> jax.Array:
        """`z [B, T, hidden]` -> codes `[B, T, num_layers]`."""
        r = z if self.input_proj is None else self.input_proj(z)
        b, t, d = r.shape
        r = r.reshape(b * t, d)
        codes = []
        for layer in self.layers:
            embed = layer.codebook.embed()
            idx = cdist_argmin(r, embed)
            r = r - embed[idx]
            codes.append(idx)
        return jnp.stack(codes, axis=-1).reshape(b, t, len(codes))


class SplitResidualVectorQuantizer(nnx.Module):
    """Semantic RVQ and acoustic RVQ, each on the same latent; codes `[semantic, acoustic]`."""

    def __init__(self, cfg: CodecEncoderConfig, *, rngs: nnx.Rngs):
        n_sem = cfg.num_semantic_quantizers
        self.semantic_residual_vector_quantizer = ResidualVectorQuantizer(cfg, n_sem, rngs=rngs)
        self.acoustic_residual_vector_quantizer = ResidualVectorQuantizer(
            cfg, cfg.valid_num_quantizers - n_sem, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        codes = [self.semantic_residual_vector_quantizer(z)]
        if len(self.acoustic_residual_vector_quantizer.layers):
            codes.append(self.acoustic_residual_vector_quantizer(z))
        return jnp.concatenate(codes, axis=-1)


class CodecEncoder(nnx.Module):
    """`Qwen3TTSTokenizerV2Encoder` (a MimiModel without its decoder), float32 throughout."""

    def __init__(self, cfg: CodecEncoderConfig, *, rngs: nnx.Rngs):
        if not cfg.num_semantic_quantizers <= cfg.valid_num_quantizers <= cfg.num_quantizers:
            raise ValueError(f"codec encoder: valid_num_quantizers {cfg.valid_num_quantizers} must lie "
                             f"in [{cfg.num_semantic_quantizers}, {cfg.num_quantizers}]")
        if cfg.vector_quantization_hidden_dimension != cfg.codebook_dim:
            raise ValueError("codec encoder: vector_quantization_hidden_dimension "
                             f"{cfg.vector_quantization_hidden_dimension} != codebook_dim {cfg.codebook_dim}")
        self.cfg = cfg
        self.encoder = MimiEncoder(cfg, rngs=rngs)
        self.encoder_transformer = MimiTransformer(cfg, rngs=rngs)
        encodec_rate = math.ceil(cfg.sampling_rate / cfg.hop_length)
        if cfg.frame_rate != encodec_rate:
            self.downsample = MimiConv1d(cfg.hidden_size, cfg.hidden_size,
                                         2 * int(encodec_rate / cfg.frame_rate), stride=2, bias=False,
                                         replicate=True, rngs=rngs)
        else:
            self.downsample = None
        self.quantizer = SplitResidualVectorQuantizer(cfg, rngs=rngs)

    @property
    def samples_per_frame(self) -> int:
        return self.cfg.hop_length * (1 if self.downsample is None else self.downsample.stride)

    def __call__(self, pcm: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`pcm [B, L]` right-padded, valid `lengths [B]` (>= 1) -> `(codes [B, T, Q] int32, frames [B])`.

        Frame `t < frames[b]` of row b equals the reference's encode of `pcm[b, :lengths[b]]`;
        later frames are padding. `T = ceil(L / samples_per_frame)`.
        """
        with jax.default_matmul_precision("highest"):
            lengths = lengths.astype(jnp.int32)
            x, n = self.encoder(pcm[:, :, None].astype(jnp.float32), lengths)  # [B, T25, H]
            with jax.named_scope("encoder_transformer"):
                x = self.encoder_transformer(x)
            if self.downsample is not None:
                x, n = self.downsample(x, n)  # [B, T12, H]
            with jax.named_scope("quantizer"):
                codes = self.quantizer(x)
        return codes, n


# ----------------------------------------------------------------------------------------
# Host-side driver



@functools.partial(jax.jit, static_argnums=0)
def _encode_jit(graphdef, state, pcm, lengths):
    module = nnx.merge(graphdef, state)
    return module(pcm, lengths)


def encode(module: CodecEncoder, pcm_24k: np.ndarray) -> np.ndarray:
    """Codes `int32 [ceil(L / 1920), valid_num_quantizers]` of one mono clip at the codec's rate.

    `pcm_24k`: float `[L]`, L >= 1, finite. Equals the reference speech tokenizer's
    `encode` of the same samples (no normalisation; resample beforehand with `audio.to_24k`).
    """
    return encode_batch(module, [pcm_24k])[0]


def encode_batch(module: CodecEncoder, pcms: list[np.ndarray]) -> list[np.ndarray]:
    """`encode` of several clips in one device call; each result equals the single-clip one.

    (The reference wrapper, batching, would zero-pad every clip to the longest and let the
    padding leak into each clip's last frame; here rows never see each other's padding.)
    """
    from qwen3tts_jax.audio import check_pcm

    if not pcms:
        return []
    pcms = [check_pcm(p, f"audio {i}") for i, p in enumerate(pcms)]
    spf = module.samples_per_frame
    frames = [-(-p.shape[0] // spf) for p in pcms]
    rows = 1 << (len(pcms) - 1).bit_length()  # batch bucket: a power of two
    buf = np.zeros((rows, buckets.encoder_frames(max(frames)) * spf), np.float32)
    lengths = np.ones((rows,), np.int32)  # filler rows: one zero sample
    for i, p in enumerate(pcms):
        buf[i, : p.shape[0]] = p
        lengths[i] = p.shape[0]
    graphdef, state = nnx.split(module)
    codes, _ = _encode_jit(graphdef, state, jnp.asarray(buf), jnp.asarray(lengths))
    codes = np.asarray(codes, dtype=np.int32)
    return [codes[i, :n] for i, n in enumerate(frames)]
