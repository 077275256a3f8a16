"""Streamed text over /api/v1/speak: `speak` with `textStream`, `appendText`, `endText`.

The real engine on a tiny checkpoint: a streamed request's pcm32f equals, byte for byte, one
`speak` of the whole text with the same seed, however the text was split and timed; so does
Home Assistant's streamed answer over Wyoming. The fake
engine: the protocol's edges (no open request, endText twice, cancel while waiting, idle
timeout, the text cap, a streamed request queued behind another).
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from wyoming.client import AsyncTcpClient
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from tests.fake_engine import FakeTTS
from tests.server_harness import Client, arun, expected_pcm, running_server
from tests.test_server_engine import real_loader, tts  # noqa: F401 - the module's tiny model fixture
from tests.test_server_voices import wav_b64
from tests.test_wyoming import read_until, utterances, wyoming_server

TEXT = "Hello there, this is a streamed test. The words arrive one by one, as an LLM writes them."


def random_pieces(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(3, 12)))
    return [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]


async def stream(c: Client, pieces: list[str], rng: random.Random | None = None, **speak) -> tuple[bytes, dict]:
    """Send `pieces` as one streamed request (random small delays with `rng`); its PCM and end."""
    await c.send(type="speak", textStream=True, text=pieces[0], **speak)
    for piece in pieces[1:]:
        if rng is not None:
            await asyncio.sleep(rng.choice([0, 0, 0.005, 0.03]))
        await c.send(type="appendText", text=piece)
    await c.send(type="endText")
    pcm, msg, _ = await c.collect()
    return pcm, msg


def test_streamed_pcm_equals_the_whole_texts_byte_for_byte(tmp_path, tts):  # noqa: F811
    async def body():
        async with running_server(tmp_path, loader=real_loader(tts, 2), batch_slots=2) as srv:
            async with Client.open(srv) as c:
                await c.send(type="registerVoice", voiceId="xv", audio=wav_b64(2.0))  # x-vector only
                assert (await c.recv_json())["type"] == "voiceRegistered"
                # x-vector, the default ICL voice, and that voice by its x-vector alone
                for voice, xvec_only in (("xv", False), ("default", False), ("default", True)):
                    await c.start(encoding="pcm32f", language="English", voice=voice, seed=11,
                                  xVectorOnly=xvec_only)
                    whole, done = await c.speak(TEXT, maxFrames=60)
                    assert done["type"] == "complete" and len(whole) > 0
                    for trial in range(2):
                        rng = random.Random(trial)
                        pcm, msg = await stream(c, random_pieces(TEXT, rng), rng, maxFrames=60)
                        assert msg["type"] == "complete", msg
                        assert pcm == whole, (voice, xvec_only, trial)
                        assert msg["charactersProcessed"] == len(TEXT) and msg["textWaitMs"] >= 0
    arun(body(), timeout=300)


def test_without_max_frames_a_streamed_text_stops_where_the_whole_text_does(tmp_path, tts):  # noqa: F811
    """No maxFrames: a whole text may take 3 s + 0.25 s a character of audio (the tiny random
    model never says its end token, so it takes all of it); a streamed text, whose length is not
    known at first, gets the same budget at endText, on the device if it is already speaking (an
    x-vector voice) or at its prefill (the ICL default voice, whose prompt waits for text)."""
    text = "Short and sweet."

    async def body():
        async with running_server(tmp_path, loader=real_loader(tts, 2), batch_slots=2) as srv:
            async with Client.open(srv) as c:
                await c.send(type="registerVoice", voiceId="xv", audio=wav_b64(2.0))
                assert (await c.recv_json())["type"] == "voiceRegistered"
                for voice in ("xv", "default"):
                    await c.start(encoding="pcm32f", language="English", voice=voice, seed=5)
                    whole, done = await c.speak(text)
                    frames = srv.backend.frame_budget(len(text), srv.cfg.max_audio_seconds)
                    assert done["audioLengthMs"] == pytest.approx(1000 * frames / srv.backend.frame_rate, abs=1)
                    pcm, msg = await stream(c, ["Short ", "and ", "sweet", "."], random.Random(1))
                    assert msg["type"] == "complete" and pcm == whole, voice
    arun(body(), timeout=300)


def test_the_worker_does_not_step_while_every_row_waits(tmp_path, tts):  # noqa: F811
    async def body():
        async with running_server(tmp_path, loader=real_loader(tts, 2), batch_slots=2) as srv:
            async with Client.open(srv) as c:
                await c.send(type="registerVoice", voiceId="xv", audio=wav_b64(2.0))
                assert (await c.recv_json())["type"] == "voiceRegistered"
                await c.start(encoding="pcm32f", language="English", voice="xv")
                await c.send(type="speak", textStream=True, text="Hello there, this is", maxFrames=40)
                engine = srv.backend.engine
                for _ in range(600):  # it speaks what it has, then waits for more text
                    if srv.worker.active == 1 and srv.worker.steps and engine.waiting:
                        break
                    await asyncio.sleep(0.1)
                steps = srv.worker.steps
                await asyncio.sleep(0.6)
                assert srv.worker.steps == steps and srv.worker.active == 1
                await c.send(type="appendText", text=" the rest of it.")
                await c.send(type="endText")
                pcm, msg, _ = await c.collect(timeout=60)
                assert msg["type"] == "complete" and msg["textWaitMs"] >= 500
                assert srv.worker.steps > steps
    arun(body(), timeout=300)


def test_x_vector_only_speaks_a_cloned_voice_by_its_x_vector(tmp_path):
    """`xVectorOnly` (start or speak): the voice's x-vector alone, so a streamed text starts after
    its first tokens instead of after the ICL prompt's share of the text."""
    async def body():
        async with running_server(tmp_path) as srv:
            async with Client.open(srv) as c:
                started = await c.start(encoding="pcm32f", xVectorOnly=True)
                assert started["xVectorOnly"] is True
                xv, _ = await c.speak("By its x-vector.", maxFrames=4)
                icl, _ = await c.speak("By its x-vector.", maxFrames=4, xVectorOnly=False)
            voice = srv.voices.get("default")
            from tests.fake_engine import FakeVoicePrompt

            prompt = FakeVoicePrompt.from_key(srv.fake, voice.reference, voice.transcript)
            want, _ = srv.fake.synthesize("By its x-vector.", voice=prompt.without_reference(), max_new_frames=4)
            assert xv == want.tobytes() and icl == expected_pcm(srv, "By its x-vector.", max_new_frames=4)
            assert xv != icl
    arun(body())


def test_protocol_edges(tmp_path):
    async def body():
        async with running_server(tmp_path, FakeTTS(step_delay=0.002), text_idle_timeout_s=0.3,
                                  max_streamed_text_chars=60) as srv:
            async with Client.open(srv) as c:
                await c.start(encoding="pcm32f")
                # appendText / endText with nothing open: BAD_REQUEST, the session goes on.
                for msg in ({"type": "appendText", "text": "x"}, {"type": "endText"}):
                    await c.send(**msg)
                    err = await c.recv_json()
                    assert err["type"] == "error" and err["code"] == "BAD_REQUEST"
                # A streamed request equals the whole text's speak; endText twice is BAD_REQUEST.
                pcm, done = await stream(c, ["Split ", "in three", " pieces."], maxFrames=6, requestId="s1")
                assert done["requestId"] == "s1" and pcm == expected_pcm(srv, "Split in three pieces.",
                                                                         max_new_frames=6)
                await c.send(type="endText")
                assert (await c.recv_json())["code"] == "BAD_REQUEST"
                # Two open at once: refused.
                await c.send(type="speak", textStream=True, text="", requestId="a")
                await c.send(type="speak", textStream=True, text="", requestId="b")
                err = await c.recv_json()
                assert (err["code"], err["requestId"]) == ("BAD_REQUEST", "b")
                # A piece that is not text (JSON's lone surrogate): refused under its request's id,
                # the request goes on.
                await c.send(type="appendText", text="bad \ud83d piece")
                err = await c.recv_json()
                assert (err["code"], err["requestId"]) == ("INVALID_TEXT", "a")
                # Cancel while it waits for text: complete(cancelled), the slot is free again.
                await c.send(type="appendText", text="Waiting for")
                await c.send(type="cancel")
                msg = await c.recv_json()
                assert msg["type"] == "complete" and msg["cancelled"] and msg["requestId"] == "a"
                await asyncio.sleep(0.05)
                assert srv.worker.active == 0
                # No text for text_idle_timeout_s: TIMEOUT.
                await c.send(type="speak", textStream=True, text="Then", requestId="idle")
                err = await c.recv_json(timeout=5)
                assert (err["type"], err["code"], err["requestId"]) == ("error", "TIMEOUT", "idle")
                # More than max_streamed_text_chars in all: INVALID_TEXT.
                await c.send(type="speak", textStream=True, text="x" * 40, requestId="big")
                await c.send(type="appendText", text="y" * 40)
                err = await c.recv_json()
                assert (err["code"], err["requestId"]) == ("INVALID_TEXT", "big")
                # A streamed text with no words: INVALID_TEXT at its end.
                await c.send(type="speak", textStream=True, text="  ", requestId="blank")
                await c.send(type="endText")
                err = await c.recv_json()
                assert (err["code"], err["requestId"]) == ("INVALID_TEXT", "blank")
                # Still usable.
                pcm, done = await c.speak("Still here.", maxFrames=3)
                assert done["type"] == "complete" and pcm == expected_pcm(srv, "Still here.", max_new_frames=3)
    arun(body())


def test_audio_that_ends_before_the_text_does_takes_the_rest_quietly(tmp_path):
    """The model may end (its end token, maxFrames) while the text still arrives: `complete`
    comes, later appendText and endText are taken without errors, and the session goes on."""
    async def body():
        async with running_server(tmp_path) as srv:
            async with Client.open(srv) as c:
                await c.start(encoding="pcm32f")
                await c.send(type="speak", textStream=True, text="__early__ start", maxFrames=3, requestId="e")
                _, done, _ = await c.collect()
                assert done["type"] == "complete" and done["samples"] == 3 * 1920
                for piece in (" and more", " text."):
                    await c.send(type="appendText", text=piece)
                await c.send(type="endText")
                pcm, done = await c.speak("Next.", maxFrames=2)  # no error came in between
                assert done["type"] == "complete" and pcm == expected_pcm(srv, "Next.", max_new_frames=2)
                await c.send(type="speak", textStream=True, text="__early__ again", maxFrames=2)
                _, done, _ = await c.collect()
                await c.send(type="speak", textStream=True, text="A new one ", maxFrames=2, requestId="n")
                await c.send(type="endText")  # a new streamed request may start without the old endText
                _, done, _ = await c.collect()
                assert done["type"] == "complete" and done["requestId"] == "n"
    arun(body())


def test_a_streamed_request_queued_behind_another_keeps_its_text(tmp_path):
    async def body():
        async with running_server(tmp_path, FakeTTS(step_delay=0.01)) as srv:
            async with Client.open(srv) as c:
                await c.start(encoding="pcm32f")
                await c.send(type="speak", text="First, a whole text.", maxFrames=20, requestId="one")
                await c.send(type="speak", textStream=True, text="Then a ", maxFrames=5, requestId="two")
                await c.send(type="appendText", text="streamed one.")
                await c.send(type="endText")
                first, done1, _ = await c.collect()
                second, done2, _ = await c.collect()
                assert (done1["requestId"], done2["requestId"]) == ("one", "two")
                assert second == expected_pcm(srv, "Then a streamed one.", max_new_frames=5)
    arun(body())


@pytest.mark.parametrize("bad", [{"type": "appendText"}, {"type": "appendText", "text": 3},
                                 {"type": "speak", "textStream": "yes", "text": "x"}])
def test_malformed_stream_messages(tmp_path, bad):
    async def body():
        async with running_server(tmp_path) as srv:
            async with Client.open(srv) as c:
                await c.send(**bad)
                err = await c.recv_json()
                assert err["type"] == "error" and err["code"] == "BAD_REQUEST"
    arun(body())


def test_wyoming_stream_starts_early_and_equals_the_whole_text(tmp_path, tts):  # noqa: F811
    """Home Assistant's streaming flow over Wyoming: audio arrives while the answer is still being
    written, and it is byte for byte the audio of one `synthesize` of the whole answer (random
    cuts, a pause after each)."""
    text = "Hello there, this is a streamed answer. The words arrive one by one, as an LLM writes them."
    # The tiny random model never says its end token: a short audio cap keeps the test quick.
    async def body():
        async with wyoming_server(tmp_path, loader=real_loader(tts, 2), batch_slots=2,
                                  max_audio_seconds=3.0) as (srv, wyoming):
            async with Client.open(srv) as c:  # an x-vector voice: its prefill needs no text
                await c.send(type="registerVoice", voiceId="xv", audio=wav_b64(2.0))
                assert (await c.recv_json())["type"] == "voiceRegistered"
            voice = SynthesizeVoice(name="xv")
            async with AsyncTcpClient("127.0.0.1", wyoming.port) as client:
                await client.write_event(Synthesize(text, voice=voice).event())
                [whole] = utterances(await read_until(client, "audio-stop"))
                assert len(whole) > 0
                for trial in range(2):
                    rng = random.Random(trial)
                    cuts = sorted(rng.sample(range(1, len(text)), 8))
                    chunks = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
                    await client.write_event(SynthesizeStart(voice=voice).event())
                    reading = asyncio.create_task(read_until(client, "synthesize-stopped", timed=True))
                    for chunk in chunks:
                        await client.write_event(SynthesizeChunk(chunk).event())
                        await asyncio.sleep(0.1)
                    text_done = time.monotonic()
                    await client.write_event(Synthesize(text, voice=voice).event())
                    await client.write_event(SynthesizeStop().event())
                    events = await reading
                    first_audio = next(t for e, t in events if e.type == "audio-chunk")
                    assert first_audio < text_done - 0.2, "no audio while the text was being written"
                    events = [e for e, _ in events]
                    assert utterances(events) == [whole], trial
    arun(body(), timeout=300)
