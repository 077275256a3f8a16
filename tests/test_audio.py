"""Reference-audio loading, downmix, resampling (vs librosa, as the reference runs it) and bad input."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from qwen3tts_jax.audio import (
    MAX_CHANNELS,
    SAMPLES_PER_FRAME,
    check_pcm,
    check_sample_rate,
    load_audio,
    load_audio_24k,
    to_24k,
    to_mono,
)

SPEECH = Path(__file__).resolve().parent / "data" / "speech_16k.wav"


def _chirp(sr: int, seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = 0.4 * np.sin(2 * np.pi * (60 * t + (0.45 * sr - 60) / (2 * t[-1]) * t * t))
    x += 0.05 * np.random.default_rng(seed).standard_normal(t.size)
    return x.astype(np.float32)


@pytest.mark.parametrize("sr", [16000, 44100, 22050, 48000, 8000])
def test_to_24k_equals_librosa(sr):
    wav = load_audio(SPEECH)[0] if sr == 16000 else _chirp(sr, 1.3, seed=sr)
    ours = to_24k(wav, sr)
    ref = librosa.resample(wav, orig_sr=sr, target_sr=24000, res_type="soxr_hq")
    assert ours.dtype == np.float32 and ref.dtype == np.float32
    # librosa's length is ceil(L * float(24000 / sr)): the rounded ratio can add one sample
    # (1.3 s at 44.1 kHz -> 31201, not 31200); matched on purpose.
    assert ours.shape == ref.shape == (int(np.ceil(len(wav) * (24000 / sr))),)
    np.testing.assert_array_equal(ours, ref)


def test_to_24k_passthrough_and_short_input():
    wav = _chirp(24000, 0.2)
    out = to_24k(wav, 24000)
    np.testing.assert_array_equal(out, wav)
    assert out is not wav
    one = np.array([0.5], np.float32)  # a single sample still gives ceil(24000/16000) = 2 samples
    np.testing.assert_array_equal(to_24k(one, 16000), librosa.resample(one, orig_sr=16000, target_sr=24000))


def test_load_path_matches_librosa_load():
    wav, sr = load_audio(SPEECH)
    ref, ref_sr = librosa.load(SPEECH, sr=None, mono=True)
    assert sr == ref_sr == 16000
    np.testing.assert_array_equal(wav, ref)
    assert load_audio(str(SPEECH))[0].dtype == np.float32


def test_stereo_flac_downmix(tmp_path):
    rng = np.random.default_rng(0)
    stereo = (0.3 * rng.standard_normal((44100, 2))).astype(np.float32)
    path = tmp_path / "stereo.flac"
    sf.write(path, stereo, 44100, subtype="PCM_24")
    wav, sr = load_audio(path)
    ref, _ = librosa.load(path, sr=None, mono=True)  # what the reference does with a path
    assert sr == 44100 and wav.shape == (44100,)
    np.testing.assert_array_equal(wav, ref)
    # and the (array, sr) path: np.mean over the last axis, like the reference wrapper
    arr_wav, _ = load_audio((stereo, 44100))
    np.testing.assert_array_equal(arr_wav, np.mean(stereo, axis=-1))


def test_bytes_and_data_url_match_path():
    raw = SPEECH.read_bytes()
    wav, sr = load_audio(SPEECH)
    for src in (raw, bytearray(raw), memoryview(raw),
                "data:audio/wav;base64," + base64.b64encode(raw).decode()):
        got, got_sr = load_audio(src)
        assert got_sr == sr
        np.testing.assert_array_equal(got, wav)


def test_integer_pcm_is_scaled_like_soundfile():
    buf = io.BytesIO()
    pcm16 = (np.random.default_rng(1).uniform(-1, 1, 4000) * 32767).astype(np.int16)
    sf.write(buf, pcm16, 16000, format="WAV", subtype="PCM_16")
    from_file, _ = load_audio(buf.getvalue())
    from_array, _ = load_audio((pcm16, 16000))
    np.testing.assert_array_equal(from_array, from_file)
    u8 = np.array([0, 128, 255], np.uint8)
    np.testing.assert_allclose(load_audio((u8, 8000))[0], [-1.0, 0.0, 127 / 128])


def test_load_audio_24k_and_minimum_length():
    wav = load_audio_24k(SPEECH)
    ref = librosa.resample(librosa.load(SPEECH, sr=None)[0], orig_sr=16000, target_sr=24000)
    np.testing.assert_array_equal(wav, ref)
    # exactly one frame (80 ms) is accepted; one sample less is rejected with a clear message
    assert load_audio_24k((np.zeros(SAMPLES_PER_FRAME, np.float32), 24000)).shape == (SAMPLES_PER_FRAME,)
    with pytest.raises(ValueError, match="too short"):
        load_audio_24k((np.zeros(SAMPLES_PER_FRAME - 1, np.float32), 24000))
    with pytest.raises(ValueError, match="too short"):
        load_audio_24k((np.zeros(1279, np.float32), 16000))  # 79.9 ms at 16 kHz


@pytest.mark.parametrize("sr", [16000, 16000.0, np.int64(44100), 8000, 192000])
def test_good_sample_rates(sr):
    assert check_sample_rate(sr) == int(sr)


@pytest.mark.parametrize("sr", [4000, 7999, 192001, 384000, 0, -16000, 22050.5, float("nan"), True, "16000", None])
def test_bad_sample_rates(sr):
    with pytest.raises(ValueError, match="sample rate"):
        load_audio((np.zeros(4000, np.float32), sr))


@pytest.mark.parametrize("array, match", [
    (np.zeros(0, np.float32), "empty"),
    (np.zeros((0, 2), np.float32), "empty"),
    (np.zeros((100, 0), np.float32), "no channels"),
    (np.array([0.1, np.nan, 0.2], np.float32), "non-finite"),
    (np.array([0.1, -np.inf], np.float64), "non-finite"),
    (np.zeros((2, 48000), np.float32), "channels-first|transpose"),
    (np.zeros((4, 100, 2), np.float32), "1-D"),
    (np.float32(0.3), "1-D"),
    (np.array(["a", "b"]), "numeric"),
    (np.array([1 + 1j, 0j]), "numeric"),
])
def test_bad_arrays(array, match):
    with pytest.raises(ValueError, match=match):
        load_audio((array, 16000))


def test_bad_sources(tmp_path):
    with pytest.raises(ValueError, match="sample rate"):
        load_audio(np.zeros(100, np.float32))  # a bare array without sr
    with pytest.raises(ValueError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="URLs"):
        load_audio("https://example.com/a.wav")
    with pytest.raises(ValueError, match="empty"):
        load_audio(b"")
    with pytest.raises(ValueError, match="decode"):
        load_audio(b"definitely not audio" * 10)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF1234WAVEjunk" * 4)
    with pytest.raises(ValueError, match="decode"):
        load_audio(garbage)
    with pytest.raises(ValueError, match="base64"):
        load_audio("data:audio/wav;base64,@@@not-base64@@@")
    with pytest.raises(ValueError, match="unsupported audio source"):
        load_audio(12345)
    with pytest.raises(ValueError, match="tuple"):
        load_audio((np.zeros(10), 16000, "extra"))
    silent = tmp_path / "empty.wav"
    sf.write(silent, np.zeros(0, np.float32), 16000)
    with pytest.raises(ValueError, match="empty"):
        load_audio(silent)
    nan_file = tmp_path / "nan.wav"
    sf.write(nan_file, np.array([0.0, np.nan, 0.1], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="non-finite"):
        load_audio(nan_file)


def test_check_pcm_and_to_mono():
    np.testing.assert_array_equal(check_pcm(np.arange(3, dtype=np.float64)), np.arange(3, dtype=np.float32))
    assert to_mono(np.zeros((10, MAX_CHANNELS), np.float32)).shape == (10,)
    with pytest.raises(ValueError, match="float"):
        check_pcm(np.zeros(3, np.int16))
    with pytest.raises(ValueError):
        to_24k(np.zeros((3, 2), np.float32), 16000)
