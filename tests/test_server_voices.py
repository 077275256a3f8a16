"""Voices: listing, registration (validation, atomic store, overwrite intent), prompt caching."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os

import numpy as np
import soundfile as sf
from qwen3tts_jax.server import protocol as P

from tests.fake_engine import FakeTTS
from tests.server_harness import Client, arun, expected_pcm, running_server
from tests.test_server_errors import expect_error


def wav_b64(seconds: float = 1.0, sr: int = 16000, freq: float = 220.0, fmt: str = "WAV") -> str:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def listing(srv) -> list[dict]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}{P.VOICES_PATH}", timeout=5) as r:
        return json.loads(r.read())["voices"]


def test_register_and_use_a_voice(tmp_path):
    async def body():
        async with running_server(tmp_path) as srv, Client.open(srv) as c:
            await c.send(type="registerVoice", voiceId="alice", audio=wav_b64(), transcript="Hi, I am Alice.",
                         language="english", name="Alice", description="test voice")
            msg = await c.recv_json()
            assert msg["type"] == "voiceRegistered" and msg["voiceId"] == "alice"
            assert msg["xVectorOnly"] is False
            d = tmp_path / "voices" / "alice"
            manifest = json.loads((d / "manifest.json").read_text())
            assert manifest["language"] == "English" and manifest["transcript"] == "transcript.txt"
            assert (d / "transcript.txt").read_text().strip() == "Hi, I am Alice."
            assert any(p.name.startswith("prompt-") for p in d.iterdir())  # persisted with the voice
            assert not [p for p in (tmp_path / "voices").iterdir() if p.name.startswith(".")]
            voices = await asyncio.to_thread(listing, srv)
            assert {v["id"] for v in voices} == {"default", "alice"}
            assert next(v for v in voices if v["id"] == "alice") == {
                "id": "alice", "name": "Alice", "language": "English", "description": "test voice",
                "isDefault": False}
            calls = srv.fake.prompt_calls
            await c.start(voice="alice", encoding="pcm32f")
            pcm, done = await c.speak("in alice's voice", maxFrames=3)
            assert pcm == expected_pcm(srv, "in alice's voice", voice_id="alice", max_new_frames=3)
            assert srv.fake.prompt_calls == calls  # registration already cached the prompt
            # x-vector-only voice (no transcript), FLAC upload.
            await c.send(type="registerVoice", voiceId="bob_2", audio=wav_b64(fmt="FLAC"))
            msg = await c.recv_json()
            assert msg["type"] == "voiceRegistered" and msg["xVectorOnly"] is True
            assert not (tmp_path / "voices" / "bob_2" / "transcript.txt").exists()
    arun(body())


def test_register_validation(tmp_path):
    async def body():
        async with running_server(tmp_path) as srv, Client.open(srv) as c:
            before = sorted(os.listdir(tmp_path))
            for bad_id in ("../evil", "a/b", "..", ".hidden", "", "x" * 65, "-dash", "a b", "é"):
                await c.send(type="registerVoice", voiceId=bad_id, audio=wav_b64())
                await expect_error(c, "BAD_REQUEST")
            await c.send(type="registerVoice", voiceId=5, audio=wav_b64())
            await expect_error(c, "BAD_REQUEST")
            assert sorted(os.listdir(tmp_path)) == before  # nothing written outside the voices dir
            await c.send(type="registerVoice", voiceId="carol", audio="%%%not base64%%%")
            await expect_error(c, "BAD_REQUEST")
            await c.send(type="registerVoice", voiceId="carol",
                         audio=base64.b64encode(os.urandom(5000)).decode())
            await expect_error(c, "BAD_REQUEST")
            await c.send(type="registerVoice", voiceId="carol", audio=wav_b64(seconds=0.1))
            await expect_error(c, "BAD_REQUEST")  # too short
            await c.send(type="registerVoice", voiceId="carol", audio=wav_b64(), language="Elvish")
            await expect_error(c, "BAD_REQUEST")
            await c.send(type="registerVoice", voiceId="carol")
            await expect_error(c, "BAD_REQUEST")
            assert {v["id"] for v in await asyncio.to_thread(listing, srv)} == {"default"}
            assert not [p for p in (tmp_path / "voices").iterdir() if p.name.startswith(".")]
            # Overwrite needs intent; the default voice is never replaced.
            await c.send(type="registerVoice", voiceId="carol", audio=wav_b64(freq=300))
            assert (await c.recv_json())["type"] == "voiceRegistered"
            await c.send(type="registerVoice", voiceId="carol", audio=wav_b64(freq=400))
            await expect_error(c, "BAD_REQUEST")
            await c.send(type="registerVoice", voiceId="default", audio=wav_b64(), overwrite=True)
            await expect_error(c, "BAD_REQUEST")
            await c.start(voice="carol", encoding="pcm32f")
            first, _ = await c.speak("same text", maxFrames=2)
            await c.send(type="registerVoice", voiceId="carol", audio=wav_b64(freq=500), overwrite=True)
            assert (await c.recv_json())["type"] == "voiceRegistered"
            second, _ = await c.speak("same text", maxFrames=2)
            assert first != second  # the new reference is used, not a stale cached prompt
            assert second == expected_pcm(srv, "same text", voice_id="carol", max_new_frames=2)
    arun(body())


def test_prompt_cache_memory_disk_and_invalidation(tmp_path):
    async def body():
        fake = FakeTTS()
        async with running_server(tmp_path, fake, warmup=False) as srv:
            async with Client.open(srv) as a, Client.open(srv) as b:
                await a.speak("one", maxFrames=1)
                await b.speak("two", maxFrames=1)
            assert fake.prompt_calls == 1  # computed once, shared by both sessions
        assert list((tmp_path / "voices" / "default").glob("prompt-fake.npz"))
        fake2 = FakeTTS()
        async with running_server(tmp_path, fake2, warmup=False) as srv:
            async with Client.open(srv) as a:
                await a.speak("three", maxFrames=1)
            assert fake2.prompt_calls == 0  # loaded from the disk cache
            ref = tmp_path / "voices" / "default" / "reference.wav"
            wav, sr = sf.read(ref)
            sf.write(ref, wav * 0.5, sr)  # the reference changes on disk
            async with Client.open(srv) as a:
                await a.start(encoding="pcm32f")
                pcm, _ = await a.speak("four", maxFrames=1)
            assert fake2.prompt_calls == 1
            assert pcm == expected_pcm(srv, "four", max_new_frames=1)
    arun(body())


def test_prompt_lru_is_bounded(tmp_path):
    async def body():
        async with running_server(tmp_path, prompt_cache_size=2) as srv, Client.open(srv) as c:
            for name in ("v1", "v2", "v3"):
                await c.send(type="registerVoice", voiceId=name, audio=wav_b64(freq=100 + len(name)))
                assert (await c.recv_json())["type"] == "voiceRegistered"
            assert len(srv.voices._lru) == 2
    arun(body())


def test_new_voice_is_warmed_in_a_free_slot(tmp_path):
    """A newly loaded voice prompt is prefilled once (compiling its bucket) and released."""
    async def body():
        async with running_server(tmp_path, batch_slots=2) as srv, Client.open(srv) as c:
            engine = srv.fake.engines[0]
            await c.send(type="registerVoice", voiceId="warm", audio=wav_b64(), transcript="Warm.")
            assert (await c.recv_json())["type"] == "voiceRegistered"
            for _ in range(100):
                if sum(t == "Warm up." for _, t in engine.admit_log) >= 2:
                    break
                await asyncio.sleep(0.01)
            assert sum(t == "Warm up." for _, t in engine.admit_log) == 2  # startup + new voice
            assert engine.active_slots() == []
            # Both slots still work at once afterwards.
            await c.start(voice="warm")
            async with Client.open(srv) as d:
                await c.send(type="speak", text="one", maxFrames=2)
                await d.send(type="speak", text="two", maxFrames=2)
                assert (await c.collect())[1]["type"] == "complete"
                assert (await d.collect())[1]["type"] == "complete"
            assert sorted({s for s, t in engine.admit_log if t in ("one", "two")}) == [0, 1]
    arun(body())
