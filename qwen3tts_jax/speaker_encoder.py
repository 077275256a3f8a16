"""The x-vector speaker encoder of the Base models (ECAPA-TDNN variant), in float32.

Mirrors MOD `Qwen3TTSSpeakerEncoder` (prefix `speaker_encoder.`): attribute names follow the
reference (`blocks.0.conv`, `blocks.N.tdnn1.conv`, `blocks.N.res2net_block.blocks.M.conv`,
`blocks.N.se_block.conv1`, `mfa.conv`, `asp.tdnn.conv`, `asp.conv`, `fc`), so the converter
table only renames `weight` to `kernel`. Activations are channels-last `[B, T, C]`.
Every conv pads "same" with *reflection* (with dilation); there is no BatchNorm; the
attentive statistics pooling applies tanh *after* its TDNN's ReLU and uses population std.

Variable lengths: every layer takes the true frame count per row. Convolutions rebuild the
reflection at each row's true end with a gather and the pooling statistics are masked, so
outputs for a padded batch equal the reference run on each unpadded clip (up to float
summation order). `embed` uses this to pad clips to a few bucket lengths: statistics pooling
over time would otherwise see the padding, and compiling once per clip length would make
every new reference clip pay a fresh compile.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwen3tts_jax import buckets
from qwen3tts_jax.config import SpeakerEncoderConfig
from qwen3tts_jax.mel import MelConfig, log_mel, reflect_index

_STAT_EPS = 1e-12  # AttentiveStatisticsPooling.eps: variance clamp before the sqrt


def _same_padding(kernel_size: int, dilation: int) -> tuple[int, int]:
    """torch `padding="same"`: total `d (k - 1)`, the odd sample on the right."""
    total = dilation * (kernel_size - 1)
    return total // 2, total - total // 2


def _reflect_pad(x: jax.Array, left: int, right: int, lengths: jax.Array | None) -> jax.Array:
    """Reflect-pad `x [B, T, C]` along time, reflecting at each row's true end `lengths [B]`."""
    if left == right == 0:
        return x
    if lengths is None:
        return jnp.pad(x, ((0, 0), (left, right), (0, 0)), mode="reflect")
    t = x.shape[1]
    pos = jnp.arange(-left, t + right, dtype=jnp.int32)
    idx = jnp.clip(reflect_index(pos[None, :], lengths[:, None]), 0, t - 1)  # [B, T+l+r]
    return jnp.take_along_axis(x, idx[:, :, None], axis=1)


def _valid(x: jax.Array, lengths: jax.Array | None) -> jax.Array | None:
    """`[B, T, 1]` True on real frames (None when every frame is real)."""
    if lengths is None:
        return None
    return (jnp.arange(x.shape[1])[None, :] < lengths[:, None])[:, :, None]


def _time_mean(x: jax.Array, lengths: jax.Array | None) -> jax.Array:
    """Mean over real frames, `[B, 1, C]`."""
    if lengths is None:
        return jnp.mean(x, axis=1, keepdims=True)
    x = jnp.where(_valid(x, lengths), x, 0.0)
    return jnp.sum(x, axis=1, keepdims=True) / lengths[:, None, None].astype(x.dtype)


def _conv(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1, *,
          rngs: nnx.Rngs) -> nnx.Conv:
    """A bare k=1 conv (no padding needed): the reference's `se_block.conv*`, `asp.conv`, `fc`."""
    return nnx.Conv(in_channels, out_channels, kernel_size=(kernel_size,),
                    kernel_dilation=(dilation,), padding="VALID", use_bias=True,
                    dtype=jnp.float32, param_dtype=jnp.float32,
                    precision=jax.lax.Precision.HIGHEST, rngs=rngs)


class TimeDelayNetBlock(nnx.Module):
    """Reflect-"same" conv followed by ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int, *,
                 rngs: nnx.Rngs):
        self.padding = _same_padding(kernel_size, dilation)
        self.conv = _conv(in_channels, out_channels, kernel_size, dilation, rngs=rngs)

    def __call__(self, x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        return jax.nn.relu(self.conv(_reflect_pad(x, *self.padding, lengths)))


class Res2NetBlock(nnx.Module):
    """Split channels into `scale` chunks; `y0 = c0`, `y1 = B0(c1)`, `yi = B_{i-1}(ci + y_{i-1})`."""

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int, *,
                 rngs: nnx.Rngs):
        width = channels // scale
        self.scale = scale
        self.blocks = nnx.List([
            TimeDelayNetBlock(width, width, kernel_size, dilation, rngs=rngs)
            for _ in range(scale - 1)])

    def __call__(self, x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        parts = jnp.split(x, self.scale, axis=-1)
        outputs = [parts[0]]
        y = None
        for i, part in enumerate(parts[1:]):
            y = self.blocks[i](part if y is None else part + y, lengths)
            outputs.append(y)
        return jnp.concatenate(outputs, axis=-1)


class SqueezeExcitationBlock(nnx.Module):
    """`x * sigmoid(conv2(relu(conv1(mean_t x))))`."""

    def __init__(self, channels: int, se_channels: int, *, rngs: nnx.Rngs):
        self.conv1 = _conv(channels, se_channels, rngs=rngs)
        self.conv2 = _conv(se_channels, channels, rngs=rngs)

    def __call__(self, x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        s = _time_mean(x, lengths)  # [B, 1, C]
        s = jax.nn.sigmoid(self.conv2(jax.nn.relu(self.conv1(s))))
        return x * s


class SqueezeExcitationRes2NetBlock(nnx.Module):
    """TDNN (k1) -> Res2Net -> TDNN (k1) -> SE, plus the residual."""

    def __init__(self, in_channels: int, out_channels: int, *, scale: int, se_channels: int,
                 kernel_size: int, dilation: int, rngs: nnx.Rngs):
        self.tdnn1 = TimeDelayNetBlock(in_channels, out_channels, 1, 1, rngs=rngs)
        self.res2net_block = Res2NetBlock(out_channels, scale, kernel_size, dilation, rngs=rngs)
        self.tdnn2 = TimeDelayNetBlock(out_channels, out_channels, 1, 1, rngs=rngs)
        self.se_block = SqueezeExcitationBlock(out_channels, se_channels, rngs=rngs)

    def __call__(self, x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        h = self.tdnn1(x, lengths)
        h = self.res2net_block(h, lengths)
        h = self.tdnn2(h, lengths)
        return self.se_block(h, lengths) + x


def _statistics(x: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Weighted mean and population std over time; `weights [B, T, 1|C]` sum to 1 per row."""
    mean = jnp.sum(weights * x, axis=1, keepdims=True)  # [B, 1, C]
    var = jnp.sum(weights * jnp.square(x - mean), axis=1, keepdims=True)
    return mean, jnp.sqrt(jnp.maximum(var, _STAT_EPS))


class AttentiveStatisticsPooling(nnx.Module):
    """Channel-wise attentive mean and std; returns `[B, 2C]`."""

    def __init__(self, channels: int, attention_channels: int, *, rngs: nnx.Rngs):
        self.tdnn = TimeDelayNetBlock(channels * 3, attention_channels, 1, 1, rngs=rngs)
        self.conv = _conv(attention_channels, channels, rngs=rngs)

    def __call__(self, x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        b, t, c = x.shape
        valid = _valid(x, lengths)
        if valid is None:
            uniform = jnp.full((b, t, 1), 1.0 / t, x.dtype)
        else:
            uniform = jnp.where(valid, 1.0 / lengths[:, None, None].astype(x.dtype), 0.0)
            x = jnp.where(valid, x, 0.0)
        mean, std = _statistics(x, uniform)
        context = jnp.concatenate(
            [x, jnp.broadcast_to(mean, x.shape), jnp.broadcast_to(std, x.shape)], axis=-1)
        logits = self.conv(jnp.tanh(self.tdnn(context, lengths)))  # [B, T, C]
        if valid is not None:
            logits = jnp.where(valid, logits, -jnp.inf)
        attention = jax.nn.softmax(logits, axis=1)
        mean, std = _statistics(x, attention)
        return jnp.concatenate([mean, std], axis=-1)[:, 0]  # [B, 2C]


class SpeakerEncoder(nnx.Module):
    """Log-mel `[B, T, mel_dim]` -> x-vector `[B, enc_dim]` (float32 throughout)."""

    def __init__(self, cfg: SpeakerEncoderConfig, *, rngs: nnx.Rngs):
        _check_config(cfg)
        self.cfg = cfg
        ch, ks, dil = cfg.enc_channels, cfg.enc_kernel_sizes, cfg.enc_dilations
        blocks = [TimeDelayNetBlock(cfg.mel_dim, ch[0], ks[0], dil[0], rngs=rngs)]
        for i in range(1, len(ch) - 1):
            blocks.append(SqueezeExcitationRes2NetBlock(
                ch[i - 1], ch[i], scale=cfg.enc_res2net_scale, se_channels=cfg.enc_se_channels,
                kernel_size=ks[i], dilation=dil[i], rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.mfa = TimeDelayNetBlock(ch[-1], ch[-1], ks[-1], dil[-1], rngs=rngs)
        self.asp = AttentiveStatisticsPooling(ch[-1], cfg.enc_attention_channels, rngs=rngs)
        self.fc = _conv(ch[-1] * 2, cfg.enc_dim, rngs=rngs)

    def __call__(self, mels: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """`mels [B, T, mel_dim]`, `lengths [B]` real frames per row (default: all T)."""
        x = mels.astype(jnp.float32)
        if lengths is not None:
            lengths = jnp.asarray(lengths, jnp.int32)
        hidden = []
        for block in self.blocks:
            x = block(x, lengths)
            hidden.append(x)
        x = self.mfa(jnp.concatenate(hidden[1:], axis=-1), lengths)
        pooled = self.asp(x, lengths)  # [B, 2C]
        return self.fc(pooled[:, None, :])[:, 0]  # fc is a k=1 Conv1d on one frame


def _check_config(cfg: SpeakerEncoderConfig) -> None:
    ch = cfg.enc_channels
    if not len(ch) == len(cfg.enc_kernel_sizes) == len(cfg.enc_dilations):
        raise ValueError("enc_channels, enc_kernel_sizes and enc_dilations should have same length")
    if len(ch) < 3:
        raise ValueError(f"enc_channels {ch}: need at least one SE-Res2Net block")
    for i in range(1, len(ch) - 1):
        if ch[i] != ch[i - 1]:
            raise ValueError(f"enc_channels {ch}: SE-Res2Net block {i} has a residual, so "
                             "its input and output widths must match")
        if ch[i] % cfg.enc_res2net_scale:
            raise ValueError(f"enc_channels[{i}]={ch[i]} is not divisible by "
                             f"enc_res2net_scale={cfg.enc_res2net_scale}")
    if sum(ch[1:-1]) != ch[-1]:
        raise ValueError(f"enc_channels {ch}: the MFA input is the concatenation of the "
                         f"SE-Res2Net outputs ({sum(ch[1:-1])}) and must equal {ch[-1]}")


# --------------------------------------------------------------------------- embed


def mel_config(cfg: SpeakerEncoderConfig) -> MelConfig:
    """The front end `extract_speaker_embedding` uses (n_mels is the encoder's mel_dim, 128)."""
    return MelConfig(sample_rate=cfg.sample_rate, n_mels=cfg.mel_dim)


def min_frames(cfg: SpeakerEncoderConfig) -> int:
    """Fewest mel frames the reference accepts: every reflect pad must be shorter than T."""
    pads = [max(_same_padding(k, d)) for k, d in zip(cfg.enc_kernel_sizes, cfg.enc_dilations, strict=True)]
    return max(pads) + 1


def min_samples(cfg: SpeakerEncoderConfig) -> int:
    """Fewest 24 kHz samples `embed` accepts."""
    mel = mel_config(cfg)
    return max(mel.min_samples, min_frames(cfg) * mel.hop_size)



@functools.partial(jax.jit, static_argnames=("graphdef", "num_frames", "mel"))
def _embed_padded(graphdef, state, pcm: jax.Array, lengths: jax.Array, *, num_frames: int,
                  mel: MelConfig) -> jax.Array:
    module = nnx.merge(graphdef, state)
    mels = log_mel(pcm, lengths, num_frames=num_frames, cfg=mel)  # [B, F, mel_dim]
    return module(mels, lengths // mel.hop_size)


def validate_pcm(pcm_24k: np.ndarray, cfg: SpeakerEncoderConfig) -> np.ndarray:
    """Check a mono 24 kHz float clip and return it as float32; ValueError if unusable."""
    pcm = np.asarray(pcm_24k)
    if pcm.ndim != 1:
        raise ValueError(f"expected mono PCM of shape [samples], got shape {pcm.shape}")
    if not np.issubdtype(pcm.dtype, np.floating):
        raise ValueError(f"expected float PCM in [-1, 1], got dtype {pcm.dtype} "
                         "(convert integer PCM by dividing by its full scale)")
    if pcm.size == 0:
        raise ValueError("PCM is empty")
    pcm = pcm.astype(np.float32)
    if not np.all(np.isfinite(pcm)):
        raise ValueError("PCM contains NaN or infinite samples")
    need = min_samples(cfg)
    if pcm.size < need:
        raise ValueError(f"PCM has {pcm.size} samples; the speaker encoder needs at least {need} "
                         f"({need / cfg.sample_rate:.3f} s at {cfg.sample_rate} Hz)")
    peak = float(np.max(np.abs(pcm)))
    if peak > 1.0:
        warnings.warn(f"PCM peak {peak:.3f} exceeds 1.0 (the reference only warns too)",
                      stacklevel=3)
    return pcm


def embed(module: SpeakerEncoder, pcm_24k: np.ndarray) -> np.ndarray:
    """The x-vector `float32 [enc_dim]` of one mono 24 kHz clip (`extract_speaker_embedding`).

    The clip is zero-padded to a bucket length (`buckets.mel_frames`) and its true length is passed
    along, so a handful of compiled shapes serve every clip length with the same result as
    the reference on the unpadded clip.
    """
    return embed_batch(module, [pcm_24k])[0]


def embed_batch(module: SpeakerEncoder, clips: list[np.ndarray]) -> np.ndarray:
    """x-vectors `float32 [N, enc_dim]` of N clips of any lengths, in one padded, masked batch."""
    cfg = module.cfg
    if not clips:
        raise ValueError("no clips given")
    pcms = [validate_pcm(c, cfg) for c in clips]
    mel = mel_config(cfg)
    frames = buckets.mel_frames(max(mel.num_frames(p.size) for p in pcms))
    buf = np.zeros((len(pcms), (frames + 1) * mel.hop_size), np.float32)  # any S with S // hop <= frames
    for row, pcm in zip(buf, pcms, strict=True):
        row[:pcm.size] = pcm
    lengths = np.array([p.size for p in pcms], np.int32)
    graphdef, state = nnx.split(module)
    out = _embed_padded(graphdef, state, buf, lengths, num_frames=frames, mel=mel)
    return np.asarray(out, dtype=np.float32)
