"""Reference-audio input: loading, validation, downmix and resampling to 24 kHz.

Matches the reference wrapper (`Qwen3TTSModel._normalize_audio_inputs`, TWRAP
`load_audio`): files decoded by soundfile as float32, multi-channel audio averaged over
channels (librosa `mono=True` / `np.mean(axis=-1)`), then `librosa.resample`'s default,
soxr "HQ" followed by `fix_length` to `ceil(L * 24000 / sr)` samples. No normalisation.

Every problem is a `ValueError` naming the input and the fix, raised here on the host,
never deep inside XLA. Decisions where the reference has no rule:
- Audio shorter than one codec frame (80 ms = 1920 samples at 24 kHz) is rejected by
  `load_audio_24k`: it carries no usable voice and its single frame would be mostly the
  codec's own zero padding. (`codec_encoder.encode` itself accepts any length >= 1, as the
  reference does.)
- Integer PCM arrays are scaled to [-1, 1) the way soundfile reads WAV files (int16 / 32768,
  ...). The reference would cast them to float unscaled, i.e. feed +-32768 to the codec.
- 2-D arrays are `(samples, channels)` (soundfile's layout, which the reference averages
  over the last axis); more than `MAX_CHANNELS` columns is taken to be channels-first and
  rejected rather than averaged over time.
"""

from __future__ import annotations

import base64
import io
import math
import numbers
import os

import numpy as np

TARGET_SR = 24000
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192000
MAX_CHANNELS = 16
SAMPLES_PER_FRAME = 1920  # one 12.5 Hz codec frame at 24 kHz

AudioSource = str | os.PathLike | bytes | bytearray | memoryview | tuple

_INT_SCALE = {np.dtype(np.int8): 2.0 ** 7, np.dtype(np.int16): 2.0 ** 15,
              np.dtype(np.int32): 2.0 ** 31, np.dtype(np.int64): 2.0 ** 63}


def check_sample_rate(sr, what: str = "audio") -> int:
    """`sr` as an int in [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE], or ValueError."""
    if isinstance(sr, bool) or not isinstance(sr, numbers.Real):
        raise ValueError(f"{what}: sample rate must be a number, got {type(sr).__name__}")
    if not math.isfinite(sr) or float(sr) != int(sr):
        raise ValueError(f"{what}: sample rate must be a whole number of Hz, got {sr!r}")
    sr = int(sr)
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise ValueError(f"{what}: unsupported sample rate {sr} Hz "
                         f"(supported: {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz)")
    return sr


def _as_float(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype == np.uint8:  # 8-bit WAV is unsigned, centred at 128
        return ((a.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if a.dtype in _INT_SCALE:
        return (a.astype(np.float64) / _INT_SCALE[a.dtype]).astype(np.float32)
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float32, copy=False)
    raise ValueError(f"{what}: unsupported sample dtype {a.dtype} (float or integer PCM)")


def to_mono(audio, what: str = "audio") -> np.ndarray:
    """A validated float32 `[L]` from `[L]` or `(samples, channels)`; channels are averaged."""
    a = np.asarray(audio)
    if a.dtype == object or a.dtype.kind not in "fiu":
        raise ValueError(f"{what}: expected numeric samples, got dtype {a.dtype}")
    if a.ndim == 2:
        if a.shape[1] > MAX_CHANNELS:
            raise ValueError(
                f"{what}: 2-D audio of shape {a.shape} must be (samples, channels) with at most "
                f"{MAX_CHANNELS} channels; transpose channels-first arrays")
        if a.shape[1] == 0:
            raise ValueError(f"{what}: audio has no channels (shape {a.shape})")
        a = _as_float(a, what)
        a = np.mean(a, axis=-1) if a.shape[1] > 1 else a[:, 0]
    elif a.ndim == 1:
        a = _as_float(a, what)
    else:
        raise ValueError(f"{what}: audio must be 1-D (samples) or 2-D (samples, channels), "
                         f"got shape {a.shape}")
    return check_pcm(a, what)


def check_pcm(pcm, what: str = "audio") -> np.ndarray:
    """A 1-D, non-empty, finite float array as contiguous float32, or ValueError."""
    a = np.asarray(pcm)
    if a.ndim != 1:
        raise ValueError(f"{what}: expected mono samples of shape (L,), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{what}: expected float samples, got dtype {a.dtype}")
    if a.size == 0:
        raise ValueError(f"{what}: audio is empty")
    a = np.ascontiguousarray(a, dtype=np.float32)
    bad = ~np.isfinite(a)
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(f"{what}: {int(bad.sum())} non-finite sample(s) (NaN or inf), "
                         f"first at index {first}")
    return a


def _read_file(f, what: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        audio, sr = sf.read(f, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise ValueError(f"{what}: could not decode audio ({e})") from None
    return audio, sr


def load_audio(src: AudioSource, sr: int | None = None) -> tuple[np.ndarray, int]:
    """Decode and validate audio; returns `(float32 mono [L], sample_rate)` at the source rate.

    `src`: a file path (wav/flac/ogg... anything soundfile reads); encoded file bytes
    (`bytes`, e.g. a base64-decoded upload) or a `data:audio/...;base64,` string; or
    `(array, sample_rate)`. A bare array needs `sr=`.
    """
    if isinstance(src, tuple):
        if len(src) != 2:
            raise ValueError(f"audio tuple must be (array, sample_rate), got {len(src)} items")
        array, rate = src
        what = "audio array"
        audio, rate = to_mono(array, what), check_sample_rate(rate, what)
        return audio, rate
    if isinstance(src, np.ndarray):
        if sr is None:
            raise ValueError("a bare audio array needs its sample rate: pass (array, sr) or sr=")
        return to_mono(src, "audio array"), check_sample_rate(sr, "audio array")
    if isinstance(src, (bytes, bytearray, memoryview)):
        what = "audio bytes"
        if len(src) == 0:
            raise ValueError(f"{what}: empty")
        audio, rate = _read_file(io.BytesIO(bytes(src)), what)
    elif isinstance(src, str) and src.startswith("data:"):
        what = "audio data URL"
        try:
            payload = base64.b64decode(src.split(",", 1)[1], validate=True)
        except (IndexError, ValueError):
            raise ValueError(f"{what}: not a base64 data URL") from None
        audio, rate = _read_file(io.BytesIO(payload), what)
    elif isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        what = f"audio file {path!r}"
        if path.startswith(("http://", "https://")):
            raise ValueError(f"{what}: URLs are not fetched; download the file first")
        if not os.path.isfile(path):
            raise ValueError(f"{what}: no such file")
        audio, rate = _read_file(path, what)
    else:
        raise ValueError(f"unsupported audio source type {type(src).__name__} "
                         "(a path, bytes, or (array, sample_rate))")
    return to_mono(audio, what), check_sample_rate(rate, what)


def to_24k(wav: np.ndarray, sr: int, target_sr: int = TARGET_SR) -> np.ndarray:
    """Resample mono float audio to `target_sr` exactly as `librosa.resample` (soxr_hq, fix=True)."""
    wav = check_pcm(wav)
    sr = check_sample_rate(sr)
    if sr == target_sr:
        return wav.copy()
    import soxr

    n_samples = int(np.ceil(wav.shape[0] * (float(target_sr) / sr)))
    out = soxr.resample(wav, sr, target_sr, quality="soxr_hq")
    if out.shape[0] > n_samples:
        out = out[:n_samples]
    elif out.shape[0] < n_samples:
        out = np.pad(out, (0, n_samples - out.shape[0]))
    return np.ascontiguousarray(out, dtype=np.float32)


def load_audio_24k(src: AudioSource, sr: int | None = None, *,
                   min_samples: int = SAMPLES_PER_FRAME) -> np.ndarray:
    """`load_audio` + `to_24k`, rejecting clips shorter than `min_samples` at 24 kHz (one frame)."""
    audio, rate = load_audio(src, sr)
    wav = to_24k(audio, rate)
    if wav.shape[0] < min_samples:
        raise ValueError(f"audio is too short: {wav.shape[0] / TARGET_SR * 1000:.1f} ms; reference "
                         f"audio needs at least {min_samples / TARGET_SR * 1000:.0f} ms")
    return wav
