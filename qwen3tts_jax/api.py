"""The public API: `Qwen3TTS` (load, voice prompts, codes, PCM, streaming, batch engine).

A facade that composes what the layers below provide: the loaded modules, the
`PromptBuilder` (tokenizer + config), the frame step's `DecodeParts`, the checkpoint's
`GenerationDefaults` and `BatchEngine`s built from them. No module below imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path

import jax
import numpy as np

from qwen3tts_jax import buckets, codec_decoder, codec_encoder, generation, paths, speaker_encoder
from qwen3tts_jax.audio import load_audio_24k
from qwen3tts_jax.checkpoint import FORMAT_VERSION, LoadedModel, format_version, is_converted, load
from qwen3tts_jax.convert.converter import convert_checkpoint, resolve_source
from qwen3tts_jax.engine import BatchEngine
from qwen3tts_jax.generation import DecodeParts
from qwen3tts_jax.prompt import PromptBuilder, check_ids_of
from qwen3tts_jax.request import SAMPLING_FIELDS, GenerationDefaults, GenerationRequest
from qwen3tts_jax.text_tokenizer import TextTokenizer
from qwen3tts_jax.voice import VoicePrompt

READ_AHEAD = 256  # pieces `stream_text` reads ahead of the speech (a sync source then waits)


class Qwen3TTS:
    """A loaded Qwen3-TTS 12 Hz model: Base, CustomVoice or VoiceDesign (`model_type`).

    >>> tts = Qwen3TTS.from_pretrained("Qwen/Qwen3-TTS-12Hz-0.6B-Base")       # doctest: +SKIP
    >>> voice = tts.create_voice_prompt("ref.wav", ref_text="Okay. Yeah.")    # doctest: +SKIP
    >>> wav, sr = tts.synthesize("Hello world.", voice=voice, language="English")  # doctest: +SKIP
    >>> tts = Qwen3TTS.from_pretrained("Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice")  # doctest: +SKIP
    >>> wav, sr = tts.synthesize("Hello.", speaker="ryan", language="English")    # doctest: +SKIP
    """

    def __init__(self, model: LoadedModel):
        self.model = model
        self.config = model.config
        self.dtype = model.dtype
        self.tokenizer = TextTokenizer.from_dir(model.path)
        self.prompts = PromptBuilder(self.config, self.tokenizer, source=str(model.path))
        self.sample_rate = self.config.speech_tokenizer.output_sample_rate
        self.samples_per_frame = self.config.speech_tokenizer.decoder.samples_per_frame
        # Sampling defaults and the frame limit, from generation_config.json (the reference
        # stops at max_new_tokens sampled tokens: 8192 released = 8191 frames).
        self.defaults = GenerationDefaults.from_dir(model.path)
        self.default_max_new_frames = self.defaults.max_new_frames
        self._row_parts: generation.RowParts | None = None
        self._idle_engines: dict[tuple, BatchEngine] = {}

    # -- loading ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, dtype: str | None = None,
                        cache_dir: str | os.PathLike | None = None) -> Qwen3TTS:
        """Load a converted folder, or convert an official folder / hub id first (cached).

        Raw checkpoints are converted once into `cache_dir` (default `paths.converted_dir()`:
        `~/.cache/qwen3tts_jax/converted`, or under $QWEN3TTS_JAX_CACHE), keyed by the source
        path and dtype. `dtype` (of the talker
        and code predictor) defaults to bfloat16 on accelerators and float32 on CPU, where
        XLA's bfloat16 matmuls are several times slower than float32 ones (BENCHMARKS.md).
        A converted folder keeps the dtype it was converted with.
        """
        if dtype is None:
            dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
        path = Path(path_or_hub_id).expanduser()
        if path.is_dir() and is_converted(path):
            check_ids_of(path)
            return cls(load(path))
        source = resolve_source(path_or_hub_id)
        check_ids_of(source)  # before converting: a broken checkpoint costs no conversion
        key = hashlib.sha256(f"{source.resolve()}|{dtype}".encode()).hexdigest()[:16]
        target = Path(cache_dir) if cache_dir else paths.converted_dir()
        target = target / f"{source.name}-{dtype}-{key}"
        if format_version(target) != FORMAT_VERSION:  # absent, or written by an older layout
            convert_checkpoint(source, target, dtype=dtype, overwrite=target.exists())
        return cls(load(target))

    @property
    def languages(self) -> list[str]:
        """Language names a request may give (case-insensitive), plus "auto"; dialects are spoken
        only by their preset speakers."""
        return ["auto", *self.config.talker.spoken_languages]

    @property
    def model_type(self) -> str:
        """"base" (voice cloning), "custom_voice" (preset speakers) or "voice_design"."""
        return self.config.tts_model_type

    @property
    def speakers(self) -> list[str]:
        """The preset speakers of a CustomVoice model (empty otherwise)."""
        return list(self.config.talker.speakers)

    @property
    def supports_instruct(self) -> bool:
        """Whether `instruct=` is honoured: CustomVoice 1.7B and VoiceDesign. A 0.6B CustomVoice
        ignores it with a logged warning, as the reference does."""
        return self.prompts.supports_instruct

    # -- voices -----------------------------------------------------------------------------

    def create_voice_prompt(self, ref_audio, ref_text: str | None = None) -> VoicePrompt:
        """Speaker embedding (+ reference codes when `ref_text` is given: ICL mode). Base models only.

        `ref_audio`: a path, encoded bytes (wav/flac), or `(np.ndarray, sample_rate)`.
        `ref_text=None` (or empty) gives an x-vector-only prompt.
        """
        if self.model_type != "base":
            raise ValueError(f"create_voice_prompt clones a voice, which only Base models do; this is a "
                             f"{self.model_type} model (" + (f"speakers: {self.speakers}" if self.speakers
                                                             else "describe the voice with instruct=") + ")")
        wav = load_audio_24k(ref_audio)
        embedding = speaker_encoder.embed(self.model.speaker_encoder, wav)
        if not ref_text:
            return VoicePrompt(embedding)
        codes = codec_encoder.encode(self.model.codec_encoder, wav)
        return VoicePrompt(embedding, codes, ref_text)

    # -- generation ---------------------------------------------------------------------------

    def _requests(self, text, voice, language, seed, greedy, max_new_frames, non_streaming_text, speaker,
                  instruct, sampling, text_open: bool = False) -> tuple[list[GenerationRequest], bool]:
        """One request per text (scalars broadcast over a list of texts), every one checked
        against this model before any runs."""
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        n = len(texts)

        def per_text(value, name):
            values = list(value) if isinstance(value, list | tuple) else [value] * n
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries for {n} texts")
            return values
        seeds = per_text(seed, "seed") if isinstance(seed, list | tuple) else [seed + i for i in range(n)]
        unknown = set(sampling) - set(SAMPLING_FIELDS)
        if unknown:
            raise TypeError(f"unexpected keyword arguments {sorted(unknown)}")
        requests = [self.defaults.request(t, v, lang, seed=s, greedy=greedy, max_new_frames=max_new_frames,
                                          non_streaming_text=non_streaming_text, speaker=spk, instruct=ins,
                                          **sampling)
                    for t, v, lang, s, spk, ins in zip(texts, per_text(voice, "voice"), per_text(language, "language"),
                                                       seeds, per_text(speaker, "speaker"),
                                                       per_text(instruct, "instruct"), strict=True)]
        for r in requests:
            r.check(text_open)
            self.prompts.check(r.voice, r.language, r.speaker, r.instruct)
        return requests, single

    def generate_codes(self, text, voice: VoicePrompt | list | None = None, language="auto", *,
                       speaker: str | list | None = None, instruct: str | list | None = None, greedy: bool = False,
                       seed: int | list = 0, max_new_frames: int | None = None,
                       non_streaming_text: bool | None = None, **sampling) -> np.ndarray | list[np.ndarray]:
        """Codec frames `int32 [T, groups]` for `text` (or a list, generated as one batch).

        Base: `voice` (a `create_voice_prompt`). CustomVoice: `speaker` (one of `tts.speakers`)
        and, at 1.7B, `instruct`. VoiceDesign: `instruct` (the voice described in words).
        `non_streaming_text=None`: the model's default (streaming text for Base, non-streaming
        for CustomVoice and VoiceDesign, as the reference).
        """
        requests, single = self._requests(text, voice, language, seed, greedy, max_new_frames,
                                          non_streaming_text, speaker, instruct, sampling)
        codes = self._run(requests)
        return codes[0] if single else codes

    def _run(self, requests: list[GenerationRequest], audio: bool = False):
        """All requests as one batch; codes per request, and with `audio` their streamed PCM."""
        frames: list[list[np.ndarray]] = [[] for _ in requests]
        pcm: list[list[np.ndarray]] = [[] for _ in requests]
        max_frames = max(r.max_new_frames or 0 for r in requests)
        with self._engine(len(requests), stream_audio=audio, max_new_frames=max_frames) as engine:
            for slot, r in enumerate(requests):
                engine.admit(slot, r)
            while engine.active_slots():
                for slot, out in engine.step().items():
                    frames[slot].append(out.codes)
                    pcm[slot].append(out.pcm)
        groups = self.config.talker.num_code_groups
        codes = [np.concatenate(f) if f else np.zeros((0, groups), np.int32) for f in frames]
        if not audio:
            return codes
        return codes, [np.concatenate(p) if p else np.zeros(0, np.float32) for p in pcm]

    def synthesize(self, text, voice: VoicePrompt | list | None = None, language="auto", *,
                   speaker: str | list | None = None, instruct: str | list | None = None, greedy: bool = False,
                   seed: int | list = 0, max_new_frames: int | None = None, non_streaming_text: bool | None = None,
                   **sampling):
        """`(wav float32 [N], sample_rate)` for `text`, or a list of them for a list of texts (one
        batch); the arguments are `generate_codes`'.

        The waveform is exactly what `stream` yields for the same arguments, concatenated: the
        streaming codec decoder run over `ref_codes + generated` (Base ICL; from an empty state
        otherwise), the reference frames' samples cut at exactly `T_ref * samples_per_frame`.
        For the reference's own offline decode (300-frame chunks, its float cut) use `decode_codes`.
        """
        requests, single = self._requests(text, voice, language, seed, greedy, max_new_frames,
                                          non_streaming_text, speaker, instruct, sampling)
        _, wavs = self._run(requests, audio=True)
        return (wavs[0], self.sample_rate) if single else [(w, self.sample_rate) for w in wavs]

    def stream(self, text: str, voice: VoicePrompt | None = None, language="auto", *, speaker: str | None = None,
               instruct: str | None = None, greedy: bool = False, seed: int = 0, max_new_frames: int | None = None,
               non_streaming_text: bool | None = None, **sampling) -> Iterator[np.ndarray]:
        """float32 PCM chunks, each yielded as soon as its frame exists (80 ms per frame)."""
        (request,), _ = self._requests(text, voice, language, seed, greedy, max_new_frames,
                                       non_streaming_text, speaker, instruct, sampling)
        with self._engine(1, stream_audio=True, max_new_frames=request.max_new_frames or 0) as engine:
            engine.admit(0, request)
            while engine.active_slots():
                out = engine.step().get(0)
                if out is not None and out.pcm.size:
                    yield out.pcm

    def stream_text(self, chunks: Iterable[str] | AsyncIterable[str], voice: VoicePrompt | None = None,
                    language="auto", *, speaker: str | None = None, instruct: str | None = None,
                    greedy: bool = False, seed: int = 0, max_new_frames: int | None = None,
                    **sampling) -> Iterator[np.ndarray] | AsyncIterator[np.ndarray]:
        """Speak a text while it is still being written: float32 PCM chunks as frames are made,
        from `chunks`, the text in pieces (an LLM's tokens), an iterable or an async iterable
        (then this returns an async iterator). The audio equals `stream(whole_text, ...)` with the
        streaming-text layout (`non_streaming_text=False`) and the same arguments, however the
        text is split and however long each piece takes: a frame whose text has not arrived
        waits for it (`engine.BatchEngine.open`). Pieces are read on a thread of their own, so
        a slow source never stops the frames that already have their text."""
        (request,), _ = self._requests("", voice, language, seed, greedy, max_new_frames, False, speaker,
                                       instruct, sampling, text_open=True)
        if isinstance(chunks, AsyncIterable):
            return self._stream_text_async(chunks, request)
        return self._stream_text_sync(chunks, request)

    def _stream_text_sync(self, chunks: Iterable[str], request: GenerationRequest) -> Iterator[np.ndarray]:
        # Bounded: a source faster than speech waits here instead of filling memory.
        pieces: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
        stop = threading.Event()  # the caller is done (closed the iterator, or the audio ended)

        def put(item) -> None:
            while not stop.is_set():
                try:
                    return pieces.put(item, timeout=0.1)
                except queue.Full:
                    continue

        def read():
            source = iter(chunks)
            try:
                for piece in source:
                    if stop.is_set():
                        break
                    put(("text", piece))
                else:
                    put(("end", None))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                put(("error", exc))
            finally:
                if stop.is_set() and hasattr(source, "close"):
                    source.close()  # an LLM's stream stops being read once nobody listens
        threading.Thread(target=read, name="stream_text reader", daemon=True).start()
        try:
            yield from self._speak_arriving_text(pieces, request)
        finally:
            stop.set()

    async def _stream_text_async(self, chunks: AsyncIterable[str], request: GenerationRequest
                                 ) -> AsyncIterator[np.ndarray]:
        loop = asyncio.get_running_loop()
        pieces: queue.Queue = queue.Queue()
        made: asyncio.Queue = asyncio.Queue()

        async def read():
            try:
                async for piece in chunks:
                    pieces.put(("text", piece))
                pieces.put(("end", None))
            except Exception as exc:  # noqa: BLE001 - handed to the consumer
                pieces.put(("error", exc))

        def speak():  # the device work, off the event loop
            try:
                for pcm in self._speak_arriving_text(pieces, request):
                    loop.call_soon_threadsafe(made.put_nowait, ("pcm", pcm))
                loop.call_soon_threadsafe(made.put_nowait, ("done", None))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                loop.call_soon_threadsafe(made.put_nowait, ("error", exc))
        reader = asyncio.ensure_future(read())
        speaker = threading.Thread(target=speak, name="stream_text speaker", daemon=True)
        speaker.start()
        try:
            while True:
                kind, value = await made.get()
                if kind == "pcm":
                    yield value
                elif kind == "done":
                    return
                else:
                    raise value
        finally:
            reader.cancel()
            pieces.put(("stop", None))
            await asyncio.to_thread(speaker.join)

    def _speak_arriving_text(self, pieces: queue.Queue, request: GenerationRequest) -> Iterator[np.ndarray]:
        """Step one open slot, taking text from `pieces` ((kind, value): "text", "end", "error",
        "stop") between frames, and blocking on it only while the row waits for text."""
        with self._engine(1, stream_audio=True, max_new_frames=request.max_new_frames or 0) as engine:
            engine.open(0, request)
            ended = False
            while engine.active_slots():
                # What has arrived by now (at least one piece while the row waits), then a step:
                # a source that never pauses cannot keep the row from speaking.
                for _ in range(0 if ended else max(1, pieces.qsize())):
                    try:
                        kind, value = pieces.get(block=engine.waiting)
                    except queue.Empty:
                        break
                    if kind == "text":
                        engine.append_text(0, value)
                    elif kind == "end":
                        engine.end_text(0)
                        ended = True
                        break
                    elif kind == "error":
                        raise value
                    else:
                        return
                out = engine.step().get(0)
                if out is not None and out.pcm.size:
                    yield out.pcm

    @contextlib.contextmanager
    def _engine(self, num_slots: int, *, stream_audio: bool, max_new_frames: int):
        """An idle engine of this shape from a small pool (building one allocates its caches and
        traces the codec state), returned with every slot released when the caller is done."""
        key = (num_slots, buckets.cache_len(max_new_frames), stream_audio)
        engine = self._idle_engines.pop(key, None) or self.batch_engine(
            num_slots, max_seq_len=key[1], stream_audio=stream_audio)
        try:
            yield engine
        finally:
            for slot in engine.active_slots():
                engine.release(slot)
            self._idle_engines[key] = engine
            while len(self._idle_engines) > 4:  # bounded: each engine holds a KV cache
                self._idle_engines.pop(next(iter(self._idle_engines)))

    def batch_engine(self, num_slots: int = 1, *, max_seq_len: int = 2048, max_text_tokens: int = 512,
                     stream_audio: bool = True) -> BatchEngine:
        """A continuous-batching engine over `num_slots` rows (see `qwen3tts_jax.engine`).

        `max_seq_len` bounds prompt + generated frames per row (2048: about 2:40 of audio after
        a 10 s reference clip); `max_text_tokens` bounds the text fed during decoding.
        """
        return BatchEngine(self.prompts, self.row_parts(), self.model.codec_decoder, num_slots,
                           max_seq_len=max_seq_len, max_text_tokens=max_text_tokens, stream_audio=stream_audio,
                           default_max_new_frames=self.default_max_new_frames, sample_rate=self.sample_rate)

    # -- decoding -----------------------------------------------------------------------------

    def decode_codes(self, codes: np.ndarray, ref_codes: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """PCM exactly as the reference's speech tokenizer decodes (300-frame chunks, 25 of context),
        and, with `ref_codes`, the reference's voice-clone cut `int(ref_len / total_len * len(wav))`."""
        codes = np.asarray(codes, np.int32)
        full = codes if ref_codes is None else np.concatenate([np.asarray(ref_codes, np.int32), codes])
        wav = codec_decoder.decode_to_list(self.model.codec_decoder, full[None])[0]
        if ref_codes is not None:
            cut = int(len(ref_codes) / max(len(full), 1) * wav.shape[0])
            wav = wav[cut:]
        return np.asarray(wav, np.float32), self.sample_rate

    # -- parts the engines decode with -------------------------------------------------------

    def row_parts(self) -> generation.RowParts:
        """The frame step's spec and weights by rows computed per step, built once and shared by
        every engine: where `generation.packing_pays` (a float32 model on CPU, kernel on), steps
        of up to `generation.PACKED_MAX_ROWS` rows use the bfloat16-exact matrices packed for the
        CPU kernel (`generation.pack_parts`, kept beside the float32 ones)."""
        if self._row_parts is None:
            plain = generation.make_parts(self.model.talker, self.model.code_predictor, self.config)
            packed = generation.pack_parts(plain) if generation.packing_pays(self.dtype) else None
            self._row_parts = generation.RowParts(plain, packed, generation.PACKED_MAX_ROWS)
        return self._row_parts

    def decode_parts(self, rows: int | None = None) -> DecodeParts:
        """The parts a step over `rows` rows decodes with (None: the float32 ones)."""
        parts = self.row_parts()
        return parts.plain if rows is None else parts.for_rows(rows)


__all__ = ["GenerationRequest", "Qwen3TTS", "VoicePrompt"]
