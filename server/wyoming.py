"""Home Assistant's Wyoming TTS protocol, served from the server's own asyncio loop.

Wyoming is JSON-line events over plain TCP (the `wyoming` package does the framing). HA asks
`describe` once, then per reply either sends one `synthesize`, answered by `audio-start`,
`audio-chunk`s, `audio-stop`; or streams LLM output: `synthesize-start`, `synthesize-chunk`s,
a compatibility `synthesize` with the whole text (ignored here: it would be spoken twice),
`synthesize-stop`, answered by one audio-start, chunks, audio-stop and `synthesize-stopped`.
A stream is spoken as one streamed-text utterance (the WebSocket's `textStream`): audio starts
as soon as the first words are in, and it is the same audio as a one-shot `synthesize` of the
whole answer, not a string of separately spoken sentences. Only an answer longer than half the
server's `max_text_chars` is cut, at its next sentence end, into utterances of their own (one
start/chunks/stop each), so a long answer is spoken in full rather than cut at
`max_audio_seconds`; a pause in the text longer than `text_idle_timeout_s` ends the utterance
too (what came before it is spoken; what follows starts the next one). Every utterance goes
through server/speech.py, so a text, voice and seed sound the same here as on the WebSocket
and HTTP ports.

Each connection has one speaker task fed by a queue, so events keep being read while audio
is made: a stream's chunks reach its utterance as they arrive, and a client that goes away is
noticed at once (its utterance is cancelled and its device slot freed). Every synthesis reply
(audio, errors, synthesize-stopped) goes through that queue, so they go out in the order asked.

Wyoming has no authentication: HA expects it on a trusted network. Zeroconf discovery is
never started (it would announce this host on the LAN by multicast).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncEventHandler, AsyncTcpServer
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from . import protocol as P
from .audio_formats import pcm16
from .resample import StreamResampler
from .speech import ServerView, Utterance, speech

log = logging.getLogger("qwen3tts.server")

OUTPUT_RATE = P.ENGINE_SAMPLE_RATE  # HA takes its WAV header from the first audio-start: never vary it
WIDTH, CHANNELS = 2, 1  # s16le mono
WRITE_TIMEOUT_S = 30.0  # a client that stops reading for this long is dropped (and its slot freed)

ATTRIBUTION = Attribution(name="Qwen3-TTS (Alibaba Qwen), qwen3tts-jax", url="https://github.com/QwenLM/Qwen3-TTS")

ISO_CODES = {"chinese": "zh", "english": "en", "german": "de", "italian": "it", "portuguese": "pt",
             "spanish": "es", "japanese": "ja", "korean": "ko", "french": "fr", "russian": "ru"}

# Where a long answer may be cut into utterances: . ! ? or … followed by whitespace (not at
# the end of what has arrived: "3." may be followed by "14" in the next chunk), Chinese/Japanese
# full stops (no space follows those), closing quotes and brackets included, and every newline.
SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)|[。！？]+[\"'”’）」』]*|\n")


def iso_code(language: str) -> str:
    """A model language name as the ISO 639-1 code HA matches ("English" -> "en")."""
    return ISO_CODES.get(language.lower(), language.lower())


def model_language(value: str | None, languages: list[str]) -> str:
    """A Wyoming language ("en", "en_US", "en-us", "English") as the model's language name;
    "auto" when none is given or the model does not know it (the language is only a hint)."""
    if not value:
        return "auto"
    by_name = {lang.lower(): lang for lang in languages}
    by_code = {iso_code(lang): lang for lang in languages}
    value = value.lower()
    return by_name.get(value) or by_code.get(re.split(r"[-_]", value)[0]) or "auto"


def cut(text: str, limit: int) -> tuple[str, str]:
    """(at most `limit` characters of `text`, ended at whitespace where there is some; the rest)."""
    if len(text) <= limit:
        return text, ""
    at = max(text.rfind(space, 0, limit + 1) for space in " \n\t")
    at = at if at > 0 else limit  # one unbroken word: cut it
    return text[:at], text[at:]


def part_end(text: str, limit: int) -> int | None:
    """Where an utterance that has had its share should end in `text`, what arrived after that:
    just after its first sentence end, or at whitespace (else anywhere) when no sentence end
    comes within `limit` characters; None: not yet (wait for more text)."""
    m = SENTENCE_END.search(text, 0, limit + 1)
    if m is not None and m.end() <= limit:
        return m.end()
    if len(text) > limit:
        return len(cut(text, limit)[0])
    return None


def text_of(event: Event) -> str:
    """An event's text; "" when missing or not a string (the package's from_event would raise)."""
    text = event.data.get("text")
    return text if isinstance(text, str) else ""


def server_version() -> str | None:
    try:
        return metadata.version("qwen3tts-jax")
    except metadata.PackageNotFoundError:
        return None


def describe(server: ServerView) -> Info:
    """The `info` answer: one program, every voice with every model language (Qwen3-TTS voices
    speak them all), a voice's own language first."""
    codes = [iso_code(lang) for lang in server.languages]
    voices = []
    for v in server.voice_list():
        own = [iso_code(lang) for lang in ([v["language"]] if v.get("language") else v.get("languages") or [])]
        languages = list(dict.fromkeys(own[:1] + codes))
        voices.append(TtsVoice(name=v["id"], description=v.get("name") or v["id"], languages=languages,
                               installed=True, attribution=ATTRIBUTION, version=None))
    program = TtsProgram(name="qwen3tts-jax", attribution=ATTRIBUTION, installed=True,
                         description="Qwen3-TTS in JAX, streaming", version=server_version(), voices=voices,
                         supports_synthesize_streaming=True)
    return Info(tts=[program])


@dataclass
class Part:
    """One utterance of a stream: its text is fed through `text` as it arrives (None: its end)."""

    utterance: Utterance
    text: asyncio.Queue = field(default_factory=asyncio.Queue)
    chars: int = 0


@dataclass
class Stream:
    """One synthesize-start … synthesize-stop session."""

    voice: str | None = None
    language: str = "auto"
    part: Part | None = None  # the utterance its text goes to now
    held: str = ""  # arrived, not yet fed: blank text before a first word, or a long part's unfinished sentence
    parts: int = 0  # utterances opened so far
    failed: bool = False  # its error (and synthesize-stopped) went out: drop the rest
    idle_timer: asyncio.TimerHandle | None = None


class WyomingHandler(AsyncEventHandler):
    """One connection. Replies are queued as (stream, what): `what` is an Utterance to speak (a
    Part, for a stream), a ProtocolError to report, or None for a stream's end; `stream` is None
    for a one-shot `synthesize`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, owner: WyomingServer,
                 conn_id: str):
        super().__init__(reader, writer)
        self.owner = owner
        self.server = owner.server
        self.conn_id = conn_id
        self.stream: Stream | None = None
        self.replies: asyncio.Queue = asyncio.Queue()
        self.speaker: asyncio.Task | None = None

    async def run(self) -> None:
        self.owner.handlers.add(self)
        peer = self.writer.get_extra_info("peername")
        log.info(json.dumps({"event": "wyoming_connect", "conn": self.conn_id, "peer": str(peer[0]) if peer else None}))
        try:
            await super().run()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away mid-event: disconnect() has run
        finally:
            self.owner.handlers.discard(self)

    async def disconnect(self) -> None:
        if self.stream is not None and self.stream.idle_timer is not None:
            self.stream.idle_timer.cancel()
        # Cancelling the speaker leaves its `speech` block, which frees the device slot.
        if self.speaker is not None and not self.speaker.done():
            self.speaker.cancel()
            await asyncio.wait([self.speaker])
        log.info(json.dumps({"event": "wyoming_disconnect", "conn": self.conn_id}))

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write(describe(self.server).event())
        elif Synthesize.is_type(event.type):
            if self.stream is not None:  # HA's copy of the streamed text "for backwards compatibility"
                return True
            try:
                voice, language = self.resolve_voice(event.data.get("voice"))
                self.reply(None, Utterance(text_of(event), voice, language))
            except P.ProtocolError as exc:
                self.reply(None, exc)
        elif SynthesizeStart.is_type(event.type):
            if self.stream is not None:  # a new start ends the session left open
                self.end_stream()
            self.stream = Stream()
            try:
                self.stream.voice, self.stream.language = self.resolve_voice(event.data.get("voice"))
            except P.ProtocolError as exc:
                self.reply(self.stream, exc)
        elif SynthesizeChunk.is_type(event.type):
            if self.stream is not None:
                self.add_text(self.stream, text_of(event))
        elif SynthesizeStop.is_type(event.type):
            self.end_stream()
        return True

    # -- reading ------------------------------------------------------------------------------
    def resolve_voice(self, voice: dict | None) -> tuple[str | None, str]:
        """(voice id, model language) of a Wyoming voice; VOICE_NOT_FOUND for an unknown name.
        The dict is read directly: `SynthesizeVoice.from_dict` drops the language beside a name."""
        voice = voice if isinstance(voice, dict) else {}
        name = voice.get("name")
        language = voice.get("language")
        return (self.server.check_voice(name) if name is not None else None,
                model_language(language if isinstance(language, str) else None, self.server.languages))

    def add_text(self, stream: Stream, text: str) -> None:
        """Feed `text` to the stream's utterance (opening one at its first word). An utterance
        takes everything until it has half of `max_text_chars`; then it ends at its next sentence
        end (or at whitespace by `max_text_chars`) and the rest opens the next one."""
        limit = self.server.cfg.max_text_chars
        share = max(1, limit // 2)
        stream.held += text
        self.arm_idle_timer(stream)
        while stream.held:
            if stream.part is None:
                if stream.parts:  # a continuation: the cut stands for the whitespace before it
                    stream.held = stream.held.lstrip()
                if not stream.held.strip():
                    return  # blank so far: it goes with the first word
                stream.part = Part(Utterance("", stream.voice, stream.language, text_open=True))
                stream.parts += 1
                self.reply(stream, stream.part)
            part = stream.part
            if part.chars < share:
                take, stream.held = stream.held[:share - part.chars], stream.held[share - part.chars:]
                self.feed(part, take)
                continue
            at = part_end(stream.held, limit - part.chars)
            if at is None:
                return
            stream.held, rest = stream.held[:at], stream.held[at:]
            self.end_part(stream)
            stream.held = rest

    def feed(self, part: Part, text: str) -> None:
        if text:
            part.chars += len(text)
            part.text.put_nowait(text)

    def end_part(self, stream: Stream) -> None:
        """End the stream's utterance with the text it holds."""
        if stream.part is not None:
            self.feed(stream.part, stream.held)
            stream.part.text.put_nowait(None)
            stream.part, stream.held = None, ""

    def arm_idle_timer(self, stream: Stream) -> None:
        if stream.idle_timer is not None:
            stream.idle_timer.cancel()
        stream.idle_timer = asyncio.get_running_loop().call_later(
            self.server.cfg.text_idle_timeout_s, self.on_text_idle, stream)

    def on_text_idle(self, stream: Stream) -> None:
        """No text for a while (an LLM calling a tool, a stalled client): speak what there is
        rather than hold a device slot open; more text starts a new utterance."""
        stream.idle_timer = None
        if stream is self.stream and stream.part is not None:
            log.info(json.dumps({"event": "wyoming_text_idle", "conn": self.conn_id, "chars": stream.part.chars}))
            self.end_part(stream)

    def end_stream(self) -> None:
        stream, self.stream = self.stream or Stream(), None  # a stray stop still gets its stopped
        if stream.idle_timer is not None:
            stream.idle_timer.cancel()
        self.end_part(stream)
        self.reply(stream, None)

    def reply(self, stream: Stream | None, what: Utterance | Part | P.ProtocolError | None) -> None:
        self.replies.put_nowait((stream, what))
        if self.speaker is None:
            self.speaker = asyncio.create_task(self.speak_all(), name=f"wyoming speaker {self.conn_id}")

    # -- writing ------------------------------------------------------------------------------
    async def write(self, event: Event) -> None:
        try:
            await asyncio.wait_for(self.write_event(event), WRITE_TIMEOUT_S)
        except TimeoutError:
            raise ConnectionResetError(f"client read nothing for {WRITE_TIMEOUT_S:g} s") from None

    async def speak_all(self) -> None:
        """The speaker task: the queued replies, in order, until the connection ends."""
        try:
            while True:
                stream, what = await self.replies.get()
                try:
                    if stream is not None and stream.failed:
                        continue
                    if isinstance(what, P.ProtocolError):
                        raise what
                    if what is None:
                        await self.write(SynthesizeStopped().event())
                    elif isinstance(what, Part):
                        await self.speak(what.utterance, what)
                    else:
                        await self.speak(what)
                except P.ProtocolError as exc:
                    await self.report(exc, stream)
                    if stream is None:  # HA waits for audio-stop after a one-shot error: close instead
                        await self.stop()
                        return
                finally:
                    self.replies.task_done()
        except ConnectionError as exc:
            log.info(json.dumps({"event": "wyoming_client_gone", "conn": self.conn_id, "reason": str(exc)}))
            await self.stop()

    async def report(self, exc: P.ProtocolError, stream: Stream | None) -> None:
        self.server.metrics.error("wyoming", exc.code)
        log.info(json.dumps({"event": "wyoming_error", "conn": self.conn_id, "code": exc.code,
                             "message": exc.message[:200], "streaming": stream is not None}))
        await self.write(Error(text=exc.message, code=exc.code).event())
        if stream is not None:  # HA reads a stream until synthesize-stopped
            stream.failed = True
            await self.write(SynthesizeStopped().event())

    async def speak(self, utt: Utterance, part: Part | None = None) -> None:
        """Speak `utt`; a stream's `part` brings the rest of its text."""
        t0 = time.monotonic()
        async with speech(self.server, utt, "wyoming", label=f"wyoming/{self.conn_id}",
                          more_text=part.text if part else None) as (chunks, spoken):
            resample = StreamResampler(spoken.sample_rate, OUTPUT_RATE)
            await self.write(AudioStart(rate=OUTPUT_RATE, width=WIDTH, channels=CHANNELS).event())
            async for pcm in chunks:
                await self.send_audio(resample.process(pcm))
            await self.send_audio(resample.flush())
        await self.write(AudioStop().event())
        log.info(json.dumps({"event": "wyoming_speech", "conn": self.conn_id, "streamed": part is not None,
                             "chars": part.chars if part else len(utt.text),
                             "voice": utt.voice, "language": utt.language, "samples": spoken.samples,
                             "ms": round(1000 * (time.monotonic() - t0), 1),
                             "firstAudioMs": None if spoken.first_audio_s is None
                             else round(1000 * spoken.first_audio_s, 1)}))

    async def send_audio(self, samples: np.ndarray) -> None:
        if samples.size:
            await self.write(AudioChunk(rate=OUTPUT_RATE, width=WIDTH, channels=CHANNELS,
                                        audio=pcm16(samples)).event())

    async def idle(self) -> None:
        """Return once every queued reply has gone out."""
        await self.replies.join()


class WyomingServer:
    """The Wyoming TCP listener; one WyomingHandler per connection, all in this loop."""

    def __init__(self, server: ServerView):
        self.server = server
        self.handlers: set[WyomingHandler] = set()
        self.port: int | None = None
        self._tcp: AsyncTcpServer | None = None
        self._ids = itertools.count(1)

    async def start(self, host: str, port: int) -> None:
        # `start`, not `run`: `run` would take over the process's SIGTERM handler.
        tcp = AsyncTcpServer(host, port)
        await tcp.start(lambda reader, writer: WyomingHandler(reader, writer, self, f"w{next(self._ids)}"))
        self._tcp = tcp
        self.port = tcp._server.sockets[0].getsockname()[1]  # the real port when 0 was asked
        log.info(json.dumps({"event": "wyoming_listening", "host": host, "port": self.port,
                             "uri": f"tcp://{host}:{self.port}"}))
        if self.server.cfg.auth_token is not None:
            log.warning(json.dumps({"event": "wyoming_unauthenticated",
                                    "message": "the Wyoming port takes no token; keep it on a trusted network"}))

    async def stop(self) -> None:
        """Stop listening, let queued replies finish within the grace period, then close every
        connection (which cancels what is left)."""
        if self._tcp is None:
            return
        tcp, self._tcp = self._tcp, None
        tcp._server.close()
        handlers = list(self.handlers)
        if handlers:
            waits = [asyncio.ensure_future(h.idle()) for h in handlers]
            await asyncio.wait(waits, timeout=self.server.cfg.shutdown_grace_s)
            for w in waits:
                w.cancel()
        await tcp.stop()
        tasks = list(tcp._handlers)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        log.info(json.dumps({"event": "wyoming_stopped", "connections": len(handlers)}))
