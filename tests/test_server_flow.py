"""Server flow against the engine test double: real server on loopback, real websockets client."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import numpy as np
import pytest
import soxr
from qwen3tts_jax.server import protocol as P

from tests.fake_engine import FRAME, FakeTTS
from tests.server_harness import Client, arun, expected_pcm, running_server


def test_full_flow_pcm32f_exact(tmp_path):
    async def body():
        async with running_server(tmp_path) as srv, Client.open(srv) as c:
            r = c.ready
            assert r["type"] == "ready" and r["voiceLoaded"] == "default" and r["modelReady"]
            caps = r["capabilities"]
            assert caps["streaming"] is True and len(caps["languages"]) == 10
            assert set(caps["encodings"]) == {"pcm16", "pcm32f"} and 24000 in caps["sampleRates"]
            started = await c.start(encoding="pcm32f", contractId="c-1", language="english")
            assert started == {"type": "started", "sampleRate": 24000, "encoding": "pcm32f",
                               "voice": "default", "language": "English", "transport": "binary",
                               "contractId": "c-1"}
            text = "Hello there, this is a test."
            pcm, done = await c.speak(text, requestId="r1", seed=7, maxFrames=6)
            assert done["type"] == "complete" and done["requestId"] == "r1"
            assert pcm == expected_pcm(srv, text, seed=7, max_new_frames=6)
            assert done["charactersProcessed"] == len(text)
            n = len(pcm) // 4
            assert n == 6 * FRAME and done["samples"] == n
            assert done["audioLengthMs"] == pytest.approx(1000 * n / 24000)
            assert 0 < done["firstAudioMs"] <= done["durationMs"]
            # A second request on the same session, default seed, pcm16 after a re-start.
            await c.start(encoding="pcm16")
            pcm16, done = await c.speak(text, maxFrames=3)
            assert pcm16 == expected_pcm(srv, text, encoding="pcm16", seed=0, max_new_frames=3)
            await c.send(type="stop", reason="bye")
            assert await c.recv_json() == {"type": "stopped", "reason": "bye"}
            await asyncio.wait_for(c.ws.wait_closed(), 5)
            assert c.ws.close_code == 1000
    arun(body())


def test_audio_streams_as_frames(tmp_path):
    """Each engine step's PCM is sent as its own binary frame, before the request finishes."""
    async def body():
        async with running_server(tmp_path, FakeTTS(step_delay=0.03)) as srv, Client.open(srv) as c:
            await c.start(encoding="pcm16")
            await c.send(type="speak", text="streaming please", maxFrames=5)
            first = await c.recv()
            assert isinstance(first, bytes) and len(first) == FRAME * 2
            pcm, done, frames = await c.collect()
            assert len(frames) == 4 and done["type"] == "complete"
    arun(body())


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_resampled_output_matches_one_shot(tmp_path, rate):
    async def body():
        async with running_server(tmp_path) as srv, Client.open(srv) as c:
            await c.start(encoding="pcm32f", sampleRate=rate)
            pcm, done = await c.speak("resample me", maxFrames=5)
            got = np.frombuffer(pcm, "<f4")
            ref = np.frombuffer(expected_pcm(srv, "resample me", max_new_frames=5), "<f4")
            want = soxr.resample(ref, 24000, rate, quality="HQ")
            assert len(got) == len(want) == done["samples"]
            np.testing.assert_allclose(got, want, atol=1e-6)
            assert done["audioLengthMs"] == pytest.approx(1000 * len(got) / rate)
    arun(body())


def test_json_transport(tmp_path):
    async def body():
        async with running_server(tmp_path) as srv, Client.open(srv) as c:
            await c.start(transport="json", encoding="pcm32f")
            pcm, done = await c.speak("json audio", maxFrames=4)
            assert pcm == expected_pcm(srv, "json audio", max_new_frames=4)
            seqs = [m["sequenceNumber"] for m in c.chunks]
            assert seqs == list(range(len(seqs))) and c.chunks[-1]["isFinal"]
            assert not any(m["isFinal"] for m in c.chunks[:-1])
            assert c.chunks[1]["timestampMs"] == pytest.approx(1000 * FRAME / 24000)
    arun(body())


def test_http_routes(tmp_path):
    async def body():
        async with running_server(tmp_path) as srv:
            base = f"http://127.0.0.1:{srv.port}"

            def get(path):
                try:
                    with urllib.request.urlopen(base + path, timeout=5) as r:
                        return r.status, json.loads(r.read())
                except urllib.error.HTTPError as e:
                    return e.code, json.loads(e.read())

            status, health = await asyncio.to_thread(get, P.HEALTH_PATH)
            assert status == 200 and health["status"] == "ok"
            status, voices = await asyncio.to_thread(get, P.VOICES_PATH)
            assert status == 200
            assert voices["voices"] == [{"id": "default", "name": "Default (espeak-ng)",
                                         "language": "English", "description": voices["voices"][0]["description"],
                                         "isDefault": True}]
            assert (await asyncio.to_thread(get, "/nope"))[0] == 404
            assert (await asyncio.to_thread(get, P.SPEAK_PATH))[0] == 426
    arun(body())


def test_client_cli_writes_wav(tmp_path, capsys):
    from qwen3tts_jax.server.client import main as client_main

    async def body():
        async with running_server(tmp_path) as srv:
            out = tmp_path / "out.wav"
            argv = ["--text", "client test", "--url", f"ws://127.0.0.1:{srv.port}/api/v1/speak",
                    "--out", str(out), "--max-frames", "3", "--sample-rate", "16000", "--json"]
            with pytest.raises(SystemExit) as exit_:
                await asyncio.to_thread(client_main, argv)
            assert exit_.value.code == 0
            report = json.loads(capsys.readouterr().out)
            import soundfile as sf
            wav, sr = sf.read(out)
            assert sr == 16000 and len(wav) == round(3 * FRAME * 16000 / 24000)
            assert report["firstAudioMs"] > 0 and report["audioSeconds"] == pytest.approx(len(wav) / sr)
            with pytest.raises(SystemExit) as exit_:
                await asyncio.to_thread(client_main, argv[:-1] + ["--voice", "../x"])
            assert exit_.value.code == 2
    arun(body())
