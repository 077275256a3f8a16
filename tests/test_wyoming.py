"""The Wyoming TTS server (Home Assistant), driven by the `wyoming` package's own client.

HA's Wyoming integration talks through `wyoming.client.AsyncTcpClient`, so these tests send
HA's exact event sequences through that class. The server is real (the device worker, the
shared speech path); the model is the deterministic fake, so the audio is compared byte for
byte with what the fake makes for each text. On the real engine, a streamed answer equals a
one-shot `synthesize` of the whole text: tests/test_server_text_stream.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from qwen3tts_jax.server.wyoming import model_language, part_end
from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from tests.fake_engine import FRAME, LANGUAGES, FakeTTS
from tests.server_harness import arun, expected_pcm, running_server

TIMEOUT = 8.0


@contextlib.asynccontextmanager
async def wyoming_server(tmp_path, fake: FakeTTS | None = None, **overrides):
    """A running TTSServer serving Wyoming too, on a free loopback port (`--wyoming-port`)."""
    async with running_server(tmp_path, fake, wyoming_port=0, **overrides) as srv:
        yield srv, srv.wyoming


async def read_until(client: AsyncTcpClient, last: str, timed: bool = False) -> list:
    """Events up to and including the first of type `last` (with `timed`, as (event, arrival time))."""
    events = []
    while True:
        event = await asyncio.wait_for(client.read_event(), TIMEOUT)
        assert event is not None, f"connection closed after {[e.type for e in events]}"
        events.append((event, time.monotonic()) if timed else event)
        if event.type == last:
            return events


def utterances(events: list[Event]) -> list[bytes]:
    """The audio of each audio-start … audio-stop group, checking the groups' shape."""
    groups: list[bytes] = []
    audio: list[bytes] | None = None
    for event in events:
        if AudioStart.is_type(event.type):
            assert audio is None, "audio-start inside an utterance"
            start = AudioStart.from_event(event)
            assert (start.rate, start.width, start.channels) == (24000, 2, 1)
            audio = []
        elif AudioChunk.is_type(event.type):
            chunk = AudioChunk.from_event(event)
            assert (chunk.rate, chunk.width, chunk.channels) == (24000, 2, 1)
            audio.append(chunk.audio)
        elif event.type == "audio-stop":
            groups.append(b"".join(audio))
            audio = None
    assert audio is None, "an utterance without audio-stop"
    return groups


def spoken_texts(srv) -> list[str]:
    return [text for _, text in srv.fake.engines[0].admit_log if text != "Warm up."]


def test_describe_lists_one_streaming_program_with_iso_languages(tmp_path):
    async def body():
        async with wyoming_server(tmp_path) as (srv, wyoming), AsyncTcpClient("127.0.0.1", wyoming.port) as client:
            await client.write_event(Describe().event())
            info = Info.from_event((await read_until(client, "info"))[-1])
            assert len(info.tts) == 1
            program = info.tts[0]
            assert program.name == "qwen3tts-jax" and program.installed
            assert program.supports_synthesize_streaming
            assert program.attribution.url == "https://github.com/QwenLM/Qwen3-TTS"
            assert [v.name for v in program.voices] == [v["id"] for v in srv.voice_list()]
            default = next(v for v in program.voices if v.name == "default")
            assert default.installed and default.description == "Default (espeak-ng)"
            # the voice's own language first, then every model language once
            assert default.languages == ["en", "zh", "de", "it", "pt", "es", "ja", "ko", "fr", "ru"]
    arun(body())


def test_one_shot_synthesize_is_the_fakes_audio(tmp_path):
    text = "Turning on the kitchen lights."

    async def body():
        async with wyoming_server(tmp_path) as (srv, wyoming), AsyncTcpClient("127.0.0.1", wyoming.port) as client:
            await client.write_event(Synthesize(text, voice=SynthesizeVoice(name="default")).event())
            events = await read_until(client, "audio-stop")
            assert events[0].type == "audio-start"
            assert all(e.type == "audio-chunk" for e in events[1:-1])
            assert all(len(e.payload) == 2 * FRAME for e in events[1:-1])  # one chunk per engine frame
            [audio] = utterances(events)
            assert audio == expected_pcm(srv, text, encoding="pcm16", language="auto")
            # the connection stays usable
            await client.write_event(Describe().event())
            assert (await read_until(client, "info"))[-1].type == "info"
    arun(body())


def test_has_streaming_sequence_is_one_utterance_of_the_whole_text(tmp_path):
    chunks = ["Hello the", "re. How are", " you to", "day?"]
    whole = "".join(chunks)
    voice = SynthesizeVoice(name="default")

    async def body():
        async with wyoming_server(tmp_path) as (srv, wyoming), \
                AsyncTcpClient("127.0.0.1", wyoming.port) as client:
            await client.write_event(SynthesizeStart(voice=voice).event())
            for chunk in chunks:
                await client.write_event(SynthesizeChunk(chunk).event())
            await client.write_event(Synthesize(whole, voice=voice).event())  # HA's compat copy: not spoken again
            await client.write_event(SynthesizeStop().event())
            events = await read_until(client, "synthesize-stopped")
            assert utterances(events) == [expected_pcm(srv, whole, encoding="pcm16", language="auto")]
            # nothing else is queued: the next answer is the describe's
            await client.write_event(Describe().event())
            assert (await asyncio.wait_for(client.read_event(), TIMEOUT)).type == "info"
            assert spoken_texts(srv) == [whole]
    arun(body())


def test_long_answer_is_cut_at_sentence_ends_into_utterances(tmp_path):
    # max_text_chars 40: an utterance takes 20 characters, then ends at its next sentence end
    text = "The first sentence is here. Second one is longer than that. Third."
    parts = ["The first sentence is here.", "Second one is longer than that.", "Third."]

    async def body():
        async with wyoming_server(tmp_path, max_text_chars=40) as (srv, wyoming), \
                AsyncTcpClient("127.0.0.1", wyoming.port) as client:
            for chunks in ([text], [text[i:i + 3] for i in range(0, len(text), 3)]):
                await client.write_event(SynthesizeStart().event())
                for chunk in chunks:
                    await client.write_event(SynthesizeChunk(chunk).event())
                await client.write_event(SynthesizeStop().event())
                events = await read_until(client, "synthesize-stopped")
                assert spoken_texts(srv)[-3:] == parts
                assert utterances(events) == [expected_pcm(srv, p, encoding="pcm16", language="auto") for p in parts]
    arun(body())


def test_a_pause_in_the_text_speaks_what_came_before_it(tmp_path):
    async def body():
        async with wyoming_server(tmp_path, text_idle_timeout_s=0.3) as (srv, wyoming), \
                AsyncTcpClient("127.0.0.1", wyoming.port) as client:
            await client.write_event(SynthesizeStart().event())
            await client.write_event(SynthesizeChunk("Let me check the weather.").event())
            events = await read_until(client, "audio-stop")  # spoken after the pause, not held
            await client.write_event(SynthesizeChunk(" It is sunny.").event())
            await client.write_event(SynthesizeStop().event())
            events += await read_until(client, "synthesize-stopped")
            assert "error" not in [e.type for e in events]
            assert spoken_texts(srv) == ["Let me check the weather.", "It is sunny."]
            assert utterances(events) == [expected_pcm(srv, t, encoding="pcm16", language="auto")
                                          for t in spoken_texts(srv)]
    arun(body())


def test_errors_end_what_the_client_waits_for(tmp_path):
    async def body():
        async with wyoming_server(tmp_path) as (srv, wyoming):
            # unknown voice, one shot: error, then the connection closes (HA would wait for audio-stop)
            async with AsyncTcpClient("127.0.0.1", wyoming.port) as client:
                await client.write_event(Synthesize("Hi.", voice=SynthesizeVoice(name="nobody")).event())
                error = Error.from_event((await read_until(client, "error"))[-1])
                assert error.code == "VOICE_NOT_FOUND"
                assert await asyncio.wait_for(client.read_event(), TIMEOUT) is None
            # empty one-shot text
            async with AsyncTcpClient("127.0.0.1", wyoming.port) as client:
                await client.write_event(Synthesize("  ").event())
                assert Error.from_event((await read_until(client, "error"))[-1]).code == "INVALID_TEXT"
            async with AsyncTcpClient("127.0.0.1", wyoming.port) as client:
                # unknown voice, streaming: error, then synthesize-stopped; the rest is dropped
                await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="nobody")).event())
                await client.write_event(SynthesizeChunk("Dropped. Words. ").event())
                await client.write_event(SynthesizeStop().event())
                events = await read_until(client, "synthesize-stopped")
                assert [e.type for e in events] == ["error", "synthesize-stopped"]
                # only whitespace left at the stop: synthesize-stopped without audio
                await client.write_event(SynthesizeStart().event())
                await client.write_event(SynthesizeChunk(" \n ").event())
                await client.write_event(Event("synthesize-chunk", {}))  # no text at all: nothing to say
                await client.write_event(SynthesizeStop().event())
                assert [e.type for e in await read_until(client, "synthesize-stopped")] == ["synthesize-stopped"]
            assert spoken_texts(srv) == []
            metrics = srv.metrics.exposition().decode()
            assert 'qwen3tts_errors_total{code="VOICE_NOT_FOUND",interface="wyoming"} 2.0' in metrics
    arun(body())


def test_long_streamed_text_without_sentence_ends_is_cut_at_spaces_not_refused(tmp_path):
    words = "one two three four five six seven eight nine ten"  # 48 characters, no sentence end

    async def body():
        async with wyoming_server(tmp_path, max_text_chars=20) as (srv, wyoming), \
                AsyncTcpClient("127.0.0.1", wyoming.port) as client:
            await client.write_event(SynthesizeStart().event())
            await client.write_event(SynthesizeChunk(words).event())
            await client.write_event(SynthesizeStop().event())
            events = await read_until(client, "synthesize-stopped")
            assert "error" not in [e.type for e in events]
            spoken = spoken_texts(srv)
            assert spoken == ["one two three four", "five six seven eight", "nine ten"]
            assert len(utterances(events)) == 3
            # a one-shot text over the limit is refused as on the other ports
            await client.write_event(Synthesize(words).event())
            assert Error.from_event((await read_until(client, "error"))[-1]).code == "INVALID_TEXT"
    arun(body())


def test_disconnect_mid_utterance_frees_the_slot(tmp_path):
    async def body():
        async with wyoming_server(tmp_path, FakeTTS(step_delay=0.03)) as (srv, wyoming):
            client = AsyncTcpClient("127.0.0.1", wyoming.port)
            await client.connect()
            await client.write_event(Synthesize("A long answer that goes on and on. " * 20).event())
            await read_until(client, "audio-chunk")
            assert srv.worker.active == 1
            await client.disconnect()
            deadline = time.monotonic() + 1.0
            while srv.worker.active and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert srv.worker.active == 0
            assert 'qwen3tts_requests_total{interface="wyoming",outcome="disconnected"} 1.0' in \
                srv.metrics.exposition().decode()
    arun(body())


def test_text_helpers():
    assert part_end("Hi. Pi is 3.", 20) == 3
    assert part_end("Pi is 3.", 20) is None  # "3." may go on in the next chunk: wait
    assert part_end('He said "no." Then', 20) == len('He said "no."')
    assert part_end("你好。再见", 20) == 3
    assert part_end("a\nb", 20) == 2
    assert part_end("abc defgh ijk", 10) == 9  # no sentence end within the limit: at a space
    assert part_end("abcdefghijkl", 5) == 5  # one unbroken word: anywhere
    assert part_end("abc. def", 3) == 3  # a sentence end past the limit does not count
    names = list(LANGUAGES)
    assert [model_language(v, names) for v in ("en", "en_US", "pt-BR", "English", "zh", None, "xx")] == \
        ["English", "English", "Portuguese", "English", "Chinese", "auto", "auto"]


def test_stop_lets_the_utterance_in_flight_finish(tmp_path):
    text = "Finish this sentence before closing."

    async def body():
        async with wyoming_server(tmp_path, FakeTTS(step_delay=0.003)) as (srv, wyoming):
            client = AsyncTcpClient("127.0.0.1", wyoming.port)
            await client.connect()
            await client.write_event(Synthesize(text).event())
            events = await read_until(client, "audio-chunk")
            stopping = asyncio.create_task(wyoming.stop())
            events += await read_until(client, "audio-stop")
            assert utterances(events) == [expected_pcm(srv, text, encoding="pcm16", language="auto")]
            assert await asyncio.wait_for(client.read_event(), TIMEOUT) is None  # then it closes
            await asyncio.wait_for(stopping, TIMEOUT)
            await client.disconnect()
    arun(body())
