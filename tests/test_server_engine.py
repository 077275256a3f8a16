"""Acceptance: the server driving the real BatchEngine on a tiny random-weight checkpoint."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from qwen3tts_jax.server.backend import Backend, backend_for

from tests.server_harness import Client, arun, running_server
from tests.test_server_voices import wav_b64

SLOTS = 2
TEXT = "Hello there, this is a test."


@pytest.fixture(scope="module")
def tts(tiny_checkpoint):
    from qwen3tts_jax import Qwen3TTS

    return Qwen3TTS.from_pretrained(tiny_checkpoint[1], dtype="float32")


def real_loader(tts, slots: int = SLOTS):
    def load() -> Backend:
        return backend_for(tts, slots, model_key="tiny")
    return load


def reference_stream(tts, voice, text: str, seed: int, frames: int, slot: int = 0, slots: int = SLOTS) -> np.ndarray:
    """What the same engine shape produces for one request alone in `slot`."""
    from qwen3tts_jax import GenerationRequest

    engine = tts.batch_engine(slots)
    engine.admit(slot, GenerationRequest(text, voice, "English", seed, max_new_frames=frames))
    out = []
    while engine.active_slots():
        out.append(engine.step()[slot].pcm)
    return np.concatenate(out)


def default_prompt(srv, tts):
    v = srv.voices.get("default")
    return tts.create_voice_prompt(str(v.reference), ref_text=v.transcript)


def test_real_engine_flow(tmp_path, tts):
    async def body():
        # One slot, as `synthesize` of one text runs: then the streamed samples are the same bytes.
        async with running_server(tmp_path, loader=real_loader(tts, 1), batch_slots=1) as srv:
            voice = await asyncio.to_thread(default_prompt, srv, tts)
            async with Client.open(srv) as c:
                assert "English" in c.ready["capabilities"]["languages"]
                await c.start(encoding="pcm32f", language="english")
                pcm, done = await c.speak(TEXT, seed=3, maxFrames=8, requestId="r")
                got = np.frombuffer(pcm, "<f4")
                wav, sr = await asyncio.to_thread(tts.synthesize, TEXT, voice=voice, language="English",
                                                  seed=3, max_new_frames=8)
                assert sr == 24000 and len(got) == len(wav) == 8 * 1920
                assert got.tobytes() == wav.astype("<f4").tobytes()  # byte-exact: Qwen3TTS.synthesize
                assert done["samples"] == len(got) and done["charactersProcessed"] == len(TEXT)
                assert done["audioLengthMs"] == pytest.approx(1000 * len(got) / 24000)
                # Cancel mid-stream frees the slot; the next speak works.
                await c.send(type="speak", text="A long one to cancel.", maxFrames=400)
                assert isinstance(await c.recv(), bytes)
                await c.send(type="cancel")
                while isinstance(msg := await c.recv(), bytes):
                    pass
                assert '"cancelled":true' in msg
                await asyncio.sleep(0.5)
                assert srv.worker.backend.engine.active_slots() == []
                await c.start(encoding="pcm16", sampleRate=16000)
                pcm, done = await c.speak("Again.", maxFrames=4)
                assert done["type"] == "complete" and len(pcm) == 2 * done["samples"] > 0
    arun(body(), timeout=300)


def test_real_engine_concurrent_sessions_and_voice(tmp_path, tts):
    async def body():
        async with running_server(tmp_path, loader=real_loader(tts), batch_slots=SLOTS) as srv:
            voice = await asyncio.to_thread(default_prompt, srv, tts)

            async def one(i):
                async with Client.open(srv) as c:
                    await c.start(encoding="pcm32f")
                    pcm, done = await c.speak(f"Session {i} speaking.", seed=i, maxFrames=5)
                    assert done["type"] == "complete"
                    return np.frombuffer(pcm, "<f4")

            outs = await asyncio.gather(*(one(i) for i in range(3)))
            for i, got in enumerate(outs):
                want = await asyncio.to_thread(reference_stream, tts, voice, f"Session {i} speaking.", i, 5)
                # Each session its own audio. Within float noise, not bit for bit: a step computes as
                # many rows as are active then, and XLA's CPU kernels sum in a row-count-dependent order.
                np.testing.assert_allclose(got, want, atol=1e-4)
            async with Client.open(srv) as c:
                await c.send(type="registerVoice", voiceId="tone", audio=wav_b64(seconds=2.0),
                             transcript="A tone.")
                assert (await c.recv_json())["type"] == "voiceRegistered"
                await c.start(voice="tone")
                _, done = await c.speak("In the new voice.", maxFrames=3)
                assert done["type"] == "complete" and done["samples"] == 3 * 1920
    arun(body(), timeout=300)


def test_a_failed_device_step_ends_its_requests_and_the_engine_recovers(tmp_path, tts, monkeypatch):
    """An exception inside the frame step that names no slot (an injected device fault) ends the
    requests of that step with SYNTHESIS_ERROR; the engine starts again from fresh state, and the
    next request makes exactly the audio of an untouched engine."""
    from qwen3tts_jax import generation

    real = generation.generate_frames
    fault = {"armed": False}

    def faulty(*args, **kwargs):
        if fault["armed"]:
            fault["armed"] = False
            raise RuntimeError("injected device fault")
        return real(*args, **kwargs)
    monkeypatch.setattr(generation, "generate_frames", faulty)

    async def body():
        async with running_server(tmp_path, loader=real_loader(tts, 1), batch_slots=1) as srv:  # warmed up
            voice = await asyncio.to_thread(default_prompt, srv, tts)
            async with Client.open(srv) as c:
                await c.start(encoding="pcm32f", language="English")
                fault["armed"] = True
                pcm, msg = await c.speak(TEXT, seed=3, maxFrames=8, requestId="hit")
                assert (msg["type"], msg["code"], msg["requestId"]) == ("error", "SYNTHESIS_ERROR", "hit")
                assert "injected device fault" in msg["message"]
                pcm, done = await c.speak(TEXT, seed=3, maxFrames=8)
                assert done["type"] == "complete"
            return np.frombuffer(pcm, "<f4"), voice

    got, voice = arun(body(), timeout=300)
    monkeypatch.undo()
    np.testing.assert_array_equal(got, reference_stream(tts, voice, TEXT, 3, 8, slots=1))
