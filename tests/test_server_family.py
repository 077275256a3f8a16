"""The server on CustomVoice and VoiceDesign models (tiny random weights, the real engine):
preset speakers as voices, `instruct` in start/speak, capabilities, and the audio equal to
`Qwen3TTS.synthesize` byte for byte."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import numpy as np
import pytest
from qwen3tts_jax.server.backend import backend_for

from tests.server_harness import Client, arun, running_server
from tests.test_server_voices import wav_b64

TEXT = "Hello there, this is a test."
INSTRUCT = "Speak slowly and warmly."


@pytest.fixture(scope="module")
def models(checkpoints):
    from qwen3tts_jax import Qwen3TTS

    return {preset: Qwen3TTS.from_pretrained(checkpoints.get(preset, 4)[1]) for preset in ("tiny-cv", "tiny-vd")}


def loader(tts):
    return lambda: backend_for(tts, 1, model_key="family")


async def same_as_synthesize(c: Client, tts, language: str, **kw):
    """One speak over the socket (pcm32f, seed 3, 8 frames) equals `tts.synthesize` of the same."""
    pcm, done = await c.speak(TEXT, seed=3, maxFrames=8)
    assert done["type"] == "complete", done
    wav, _ = await asyncio.to_thread(tts.synthesize, TEXT, language=language, seed=3, max_new_frames=8, **kw)
    got = np.frombuffer(pcm, "<f4")
    assert len(got) == 8 * tts.samples_per_frame and got.tobytes() == wav.astype("<f4").tobytes()
    return got


async def voice_list(srv) -> list[dict]:
    url = f"http://127.0.0.1:{srv.port}/api/v1/voices"
    return json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(url).read()))["voices"]


def test_custom_voice_server(tmp_path, models):
    tts = models["tiny-cv"]

    async def body():
        async with running_server(tmp_path, loader=loader(tts), batch_slots=1) as srv:
            async with Client.open(srv) as c:
                caps = c.ready["capabilities"]
                assert caps["modelType"] == "custom_voice" and caps["speakers"] == tts.speakers
                assert caps["instruct"] is True and caps["registerVoice"] is False
                assert c.ready["voiceLoaded"] == tts.speakers[0]
                voices = await voice_list(srv)
                assert [v["id"] for v in voices] == tts.speakers
                eric = next(v for v in voices if v["id"] == "eric")
                assert eric["dialect"] == "sichuan_dialect" and "English" in eric["languages"]
                # the default speaker, then a chosen one, then with an instruct in start and per speak
                await c.start(encoding="pcm32f", language="English")
                await same_as_synthesize(c, tts, "English", speaker=tts.speakers[0])
                started = await c.start(voice="Ryan")
                assert started["voice"] == "ryan"
                plain = await same_as_synthesize(c, tts, "English", speaker="ryan")
                assert (await c.start(instruct=INSTRUCT))["instruct"] == INSTRUCT
                styled = await same_as_synthesize(c, tts, "English", speaker="ryan", instruct=INSTRUCT)
                assert not np.array_equal(plain, styled)
                await c.start(language="Chinese", voice="dylan", instruct="")
                await same_as_synthesize(c, tts, "Chinese", speaker="dylan")
                # errors keep the session
                await c.send(type="start", voice="alice")
                err = await c.recv_json()
                assert err["code"] == "VOICE_NOT_FOUND" and "ryan" in err["message"]
                await c.send(type="registerVoice", voiceId="tone", audio=wav_b64(), transcript="A tone.")
                err = await c.recv_json()
                assert err["code"] == "BAD_REQUEST" and "custom_voice" in err["message"]
                _, done = await c.speak("Still here.", maxFrames=2)
                assert done["type"] == "complete"
    arun(body(), timeout=300)


def test_voice_design_server(tmp_path, models):
    tts = models["tiny-vd"]

    async def body():
        async with running_server(tmp_path, loader=loader(tts), batch_slots=1) as srv:
            async with Client.open(srv) as c:
                caps = c.ready["capabilities"]
                assert caps["modelType"] == "voice_design" and caps["speakers"] == [] and caps["instruct"]
                assert await voice_list(srv) == []
                await c.start(encoding="pcm32f", language="English", instruct=INSTRUCT)
                await same_as_synthesize(c, tts, "English", instruct=INSTRUCT)
                await c.send(type="speak", text=TEXT, seed=3, maxFrames=8, instruct="A deep, slow voice.")
                pcm, done, _ = await c.collect()
                wav, _ = await asyncio.to_thread(tts.synthesize, TEXT, language="English", seed=3, max_new_frames=8,
                                                 instruct="A deep, slow voice.")
                assert pcm == wav.astype("<f4").tobytes()
                await c.send(type="start", voice="ryan")
                assert (await c.recv_json())["code"] == "VOICE_NOT_FOUND"
    arun(body(), timeout=300)


def test_client_cli_speaks_with_speaker_and_instruct(tmp_path, models, capsys):
    import soundfile as sf
    from qwen3tts_jax.server import protocol as P
    from qwen3tts_jax.server.client import main as client_main

    tts = models["tiny-cv"]

    async def body():
        async with running_server(tmp_path, loader=loader(tts), batch_slots=1) as srv:
            out = tmp_path / "out.wav"
            argv = ["--text", TEXT, "--url", f"ws://127.0.0.1:{srv.port}/api/v1/speak", "--out", str(out),
                    "--speaker", "ryan", "--instruct", INSTRUCT, "--language", "English", "--seed", "3",
                    "--max-frames", "8", "--json"]
            with pytest.raises(SystemExit) as exit_:
                await asyncio.to_thread(client_main, argv)
            assert exit_.value.code == 0
            assert json.loads(capsys.readouterr().out)["voice"] == "ryan"
            got, _ = sf.read(out, dtype="int16")
            wav, _ = await asyncio.to_thread(tts.synthesize, TEXT, speaker="ryan", instruct=INSTRUCT,
                                             language="English", seed=3, max_new_frames=8)
            assert got.tobytes() == P.encode_pcm(wav, "pcm16")
    arun(body(), timeout=300)
