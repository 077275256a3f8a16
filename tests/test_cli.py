"""`python -m qwen3tts_jax synthesize`: the command-line path a user takes, end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from qwen3tts_jax.__main__ import split_sentences

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "tests" / "data" / "speech_16k.wav"


def _run(*args, cache: Path):
    env = {**os.environ, "QWEN3TTS_JAX_CACHE": str(cache)}  # conversions stay in the test's folder
    return subprocess.run([sys.executable, "-m", "qwen3tts_jax", "synthesize", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=600, env=env)


def test_synthesize_writes_a_wav_per_sentence(tiny_checkpoint, tmp_path):
    hf, _ = tiny_checkpoint  # an official folder: converted on the fly into the cache
    out = tmp_path / "out.wav"
    result = _run("--model", hf, "--text", "Hello there. How are you today?", "--ref-audio", CLIP,
                  "--ref-text", "This is a test of the speech system.", "--language", "English",
                  "--out", out, "--greedy", "--max-new-frames", "5", "--quiet", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    audio, sr = sf.read(out)
    assert sr == 24000
    assert 0 < len(audio) <= 2 * 5 * 1920 and len(audio) % 1920 == 0


def test_bad_reference_audio_is_a_clear_error(tiny_checkpoint, tmp_path):
    _, converted = tiny_checkpoint
    result = _run("--model", converted, "--text", "Hi.", "--ref-audio", tmp_path / "missing.wav",
                  "--out", tmp_path / "x.wav", cache=tmp_path / "cache")
    assert result.returncode == 2
    assert "missing.wav" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("out", "extra", "needle"), [
    ("nowhere/x.wav", (), "no folder"), ("noext", (), "unknown audio format"),
    ("x.mp3", (), "cannot hold PCM_16"), ("x.flac", ("--float",), "cannot hold FLOAT")])
def test_an_output_it_cannot_write_is_refused_before_synthesis(tmp_path, out, extra, needle):
    # The model does not exist either: the output is checked first, so that error is the one shown.
    result = _run("--model", tmp_path / "no-model", "--text", "Hi.", "--out", tmp_path / out, *extra,
                  cache=tmp_path / "cache")
    assert result.returncode == 2 and needle in result.stderr and "Traceback" not in result.stderr


def test_sentences_are_split_and_bounded():
    assert split_sentences("One. Two!  Three?") == ["One.", "Two!", "Three?"]
    assert split_sentences("你好。世界！") == ["你好。", "世界！"]
    long = "word " * 200
    assert all(len(p) <= 300 for p in split_sentences(long))
    assert split_sentences("   ") == []


def test_synthesize_with_a_preset_speaker_and_a_designed_voice(checkpoints, tmp_path):
    """`--speaker` / `--instruct` on CustomVoice and VoiceDesign checkpoints (converted on the fly)."""
    for preset, args in (("tiny-cv", ["--speaker", "ryan", "--instruct", "Cheerfully."]),
                         ("tiny-vd", ["--instruct", "A calm, low voice."])):
        hf, _ = checkpoints.get(preset, 5)
        out = tmp_path / f"{preset}.wav"
        result = _run("--model", hf, "--text", "Hello there.", *args, "--language", "English", "--out", out,
                      "--greedy", "--max-new-frames", "4", "--quiet", cache=tmp_path / "cache")
        assert result.returncode == 0, result.stderr
        audio, sr = sf.read(out)
        assert sr == 24000 and 0 < len(audio) <= 4 * 1920
    hf, _ = checkpoints.get("tiny-cv", 5)
    result = _run("--model", hf, "--text", "Hi.", "--speaker", "nobody", "--out", tmp_path / "x.wav",
                  cache=tmp_path / "cache")
    assert result.returncode == 2 and "unknown speaker 'nobody'" in result.stderr and "Traceback" not in result.stderr
