"""Pipecat's and LiveKit Agents' own OpenAI TTS classes, each making one utterance against our server.

The frameworks pin numpy/soundfile/openai/protobuf of their own, so each lives in its own venv
under `.venv-integrations/` (`make integrations`, from `tests/integrations/requirements-*.txt`).
The server runs here, in-process (fake engine); each framework runs in a subprocess with its venv's
python (`tests/integrations/*_speak.py`), which prints one JSON line of what arrived.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.server_harness import arun, expected_pcm, http_url, running_server

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "integrations"
VENVS = REPO / ".venv-integrations"
RATE = 24000
SCRIPT_TIMEOUT = 50.0  # the frameworks import slowly (~1-2 s); one utterance of the fake takes ~1 s


def venv_python(name: str) -> Path:
    py = VENVS / name / "bin" / "python"
    if not py.is_file():
        pytest.fail(f"the {name} integration venv is missing ({py}): run `make integrations`", pytrace=False)
    return py


async def run_script(name: str, *args: str) -> dict:
    """Run tests/integrations/<name>_speak.py with the <name> venv; its JSON line. The server keeps
    serving meanwhile: the subprocess is awaited on this loop, not blocked on."""
    py = venv_python(name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"  # httpx honours *_PROXY: keep loopback direct
    proc = await asyncio.create_subprocess_exec(
        str(py), str(SCRIPTS / f"{name}_speak.py"), *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), SCRIPT_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{name}_speak.py ran past {SCRIPT_TIMEOUT:.0f} s", pytrace=False)
    tail = err.decode(errors="replace")[-4000:]
    assert proc.returncode == 0, (f"{name}_speak.py exited {proc.returncode} (venv out of date? run "
                                  f"`make integrations`):\n{tail}")
    lines = out.decode().strip().splitlines()
    assert lines, f"{name}_speak.py printed nothing:\n{tail}"
    return json.loads(lines[-1])


def sha(pcm: bytes) -> str:
    return hashlib.sha256(pcm).hexdigest()


def rms(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x * x)))


def test_pipecat_openai_tts_service_speaks_our_pcm(tmp_path):
    text = "Hello from a Pipecat pipeline."

    async def body():
        async with running_server(tmp_path) as srv:
            got = await run_script("pipecat", "--base-url", http_url(srv), "--text", text, "--voice", "alloy")
            want = expected_pcm(srv, text, encoding="pcm16", language="auto")
        assert got["errors"] == []
        # TTSService opens and closes the utterance itself (push_start_frame / push_stop_frames).
        assert got["frames"] == ["TTSStartedFrame", "TTSAudioRawFrame", "TTSStoppedFrame"]
        assert got["sample_rates"] == [RATE] and got["channels"] == [1]
        # The service re-chunks the body into 0.5 s frames (`chunk_size`) but does not touch a sample.
        assert got["audio_frames"] == -(-len(want) // RATE)  # ceil(bytes / 24000-byte chunks)
        assert got["samples"] == len(want) // 2
        assert got["sha256"] == sha(want)
    arun(body(), timeout=70)


# (response_format, model): the plugin asks for SSE for every model but tts-1/tts-1-hd, so
# "tts-1" is how to reach its plain-audio-body path.
LIVEKIT_CASES = [("pcm", "qwen3-tts"), ("pcm", "tts-1"), ("wav", "qwen3-tts"), ("mp3", "qwen3-tts")]


@pytest.mark.parametrize(("fmt", "model"), LIVEKIT_CASES, ids=["pcm-sse", "pcm-audio", "wav-sse", "mp3-sse"])
def test_livekit_openai_tts_synthesizes_our_audio(tmp_path, fmt, model):
    text = f"Hello from a LiveKit agent, as {fmt}."

    async def body():
        async with running_server(tmp_path) as srv:
            got = await run_script("livekit", "--base-url", http_url(srv), "--text", text, "--voice", "alloy",
                                   "--model", model, "--response-format", fmt)
            want = expected_pcm(srv, text, encoding="pcm16", language="auto")
        n = len(want) // 2
        assert got["errors"] == []
        assert got["event_types"] == ["SynthesizedAudio"]
        assert got["events"] >= 2 and got["finals"] == [got["events"] - 1]  # one final event, the last
        assert len(got["request_ids"]) == 1 and got["request_ids"] != ["unknown"]  # our x-request-id
        assert got["sample_rates"] == [RATE] and got["channels"] == [1]
        # LiveKit may end the segment with a 10 ms all-zero final marker (see livekit_speak.py);
        # the audio before it is what the server sent.
        assert got["samples"] == got["audio_samples"] + (RATE // 100 if got["silent_final_marker"] else 0)
        if fmt in ("pcm", "wav"):  # lossless: every sample as the server made it
            assert got["audio_samples"] == n
            assert got["audio_sha256"] == sha(want)
        else:  # mp3 through PyAV: encoder delay and frame padding add a little; same tone, same level
            assert n <= got["audio_samples"] <= n + RATE // 10
            assert got["audio_rms"] == pytest.approx(rms(want), rel=0.1)
    arun(body(), timeout=70)
