"""The public API: `Qwen3TTS` (load, voice prompts, codes, PCM, streaming, batch engine)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np

from qwen3tts_jax import codec_decoder, codec_encoder, kernels, speaker_encoder
from qwen3tts_jax.audio import load_audio_24k
from qwen3tts_jax.checkpoint import FORMAT_VERSION, LoadedModel, format_version, is_converted, load
from qwen3tts_jax.decode import DecodeSpec, make_weights, pack_weights, unroll_predictor_default
from qwen3tts_jax.engine import BatchEngine, GenerationRequest
from qwen3tts_jax.paths import default_cache_dir
from qwen3tts_jax.prompt import PromptLayout, build_layout
from qwen3tts_jax.text_tokenizer import TextTokenizer
from qwen3tts_jax.voice import VoicePrompt

# Sampling keyword arguments of generate_codes / synthesize / stream, and their fallbacks
# (the reference's hard defaults; a checkpoint's generation_config.json overrides them).
SAMPLING_DEFAULTS = dict(temperature=0.9, top_k=50, top_p=1.0, repetition_penalty=1.05,
                         subtalker_temperature=0.9, subtalker_top_k=50, subtalker_top_p=1.0)


class Qwen3TTS:
    """A loaded Qwen3-TTS 12 Hz Base model.

    >>> tts = Qwen3TTS.from_pretrained("Qwen/Qwen3-TTS-12Hz-0.6B-Base")       # doctest: +SKIP
    >>> voice = tts.create_voice_prompt("ref.wav", ref_text="Okay. Yeah.")    # doctest: +SKIP
    >>> wav, sr = tts.synthesize("Hello world.", voice=voice, language="English")  # doctest: +SKIP
    """

    sample_rate = 24000

    def __init__(self, model: LoadedModel):
        self.model = model
        self.config = model.config
        self.dtype = model.dtype
        if self.config.speaker_encoder is None:
            raise ValueError(f"{model.path}: only Base (voice-clone) checkpoints are supported; this one is "
                             f"{self.config.tts_model_type!r}")
        self.tokenizer = TextTokenizer.from_dir(model.path)
        self.samples_per_frame = self.config.speech_tokenizer.decoder.samples_per_frame
        self.generation_defaults = dict(SAMPLING_DEFAULTS)
        gen_path = model.path / "generation_config.json"
        gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
        self.generation_defaults.update({k: gen[k] for k in SAMPLING_DEFAULTS if k in gen})
        # The reference stops at max_new_tokens (8192 released) sampled tokens = 8191 frames.
        self.default_max_new_frames = int(gen.get("max_new_tokens", 2048)) - 1
        self._decode_parts = None
        self._packed_weights = None
        self._idle_engines: dict[tuple, BatchEngine] = {}

    # -- loading ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, dtype: str | None = None,
                        cache_dir: str | os.PathLike | None = None) -> Qwen3TTS:
        """Load a converted folder, or convert an official folder / hub id first (cached).

        Raw checkpoints are converted once into `cache_dir` (default `~/.cache/qwen3tts_jax`,
        or $QWEN3TTS_JAX_CACHE), keyed by the source path and dtype. `dtype` (of the talker
        and code predictor) defaults to bfloat16 on accelerators and float32 on CPU, where
        XLA's bfloat16 matmuls are several times slower than float32 ones (BENCHMARKS.md).
        A converted folder keeps the dtype it was converted with.
        """
        if dtype is None:
            dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
        path = Path(path_or_hub_id).expanduser()
        if path.is_dir() and is_converted(path):
            return cls(load(path))
        from qwen3tts_jax.convert import convert_checkpoint
        from qwen3tts_jax.convert.converter import resolve_source

        source = resolve_source(path_or_hub_id)
        key = hashlib.sha256(f"{source.resolve()}|{dtype}".encode()).hexdigest()[:16]
        target = Path(cache_dir) if cache_dir else default_cache_dir()
        target = target / f"{source.name}-{dtype}-{key}"
        if format_version(target) != FORMAT_VERSION:  # absent, or written by an older layout
            convert_checkpoint(source, target, dtype=dtype, overwrite=target.exists())
        return cls(load(target))

    @property
    def languages(self) -> list[str]:
        """Language names the model knows (case-insensitive), plus "auto"."""
        return ["auto"] + [name for name in self.config.talker.languages if "dialect" not in name]

    # -- voices -----------------------------------------------------------------------------

    def create_voice_prompt(self, ref_audio, ref_text: str | None = None) -> VoicePrompt:
        """Speaker embedding (+ reference codes when `ref_text` is given: ICL mode).

        `ref_audio`: a path, encoded bytes (wav/flac), or `(np.ndarray, sample_rate)`.
        `ref_text=None` (or empty) gives an x-vector-only prompt.
        """
        wav = load_audio_24k(ref_audio)
        embedding = speaker_encoder.embed(self.model.speaker_encoder, wav)
        if not ref_text:
            return VoicePrompt(embedding)
        codes = codec_encoder.encode(self.model.codec_encoder, wav)
        return VoicePrompt(embedding, codes, ref_text)

    # -- generation ---------------------------------------------------------------------------

    def _requests(self, text, voice, language, seed, greedy, max_new_frames, non_streaming_text,
                  sampling) -> tuple[list[GenerationRequest], bool]:
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        n = len(texts)
        voices = voice if isinstance(voice, list | tuple) else [voice] * n
        languages = language if isinstance(language, list | tuple) else [language] * n
        seeds = seed if isinstance(seed, list | tuple) else [seed + i for i in range(n)]
        if not (len(voices) == len(languages) == len(seeds) == n):
            raise ValueError("text, voice, language and seed lists must have the same length")
        if voices and voices[0] is None:
            raise ValueError("a voice prompt is required (Base models clone a voice): "
                             "voice=tts.create_voice_prompt(ref_audio, ref_text)")
        params = {**self.generation_defaults, **{k: v for k, v in sampling.items() if v is not None}}
        unknown = set(params) - set(SAMPLING_DEFAULTS)
        if unknown:
            raise TypeError(f"unexpected keyword arguments {sorted(unknown)}")
        return [GenerationRequest(t, v, lang, s, greedy, max_new_frames, non_streaming_text=non_streaming_text,
                                  **params) for t, v, lang, s in zip(texts, voices, languages, seeds, strict=True)
                ], single

    def generate_codes(self, text, voice: VoicePrompt | list, language="auto", *, greedy: bool = False,
                       seed: int | list = 0, max_new_frames: int | None = None, non_streaming_text: bool = False,
                       **sampling) -> np.ndarray | list[np.ndarray]:
        """Codec frames `int32 [T, 16]` for `text` (or a list, generated as one batch)."""
        requests, single = self._requests(text, voice, language, seed, greedy, max_new_frames,
                                          non_streaming_text, sampling)
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

    def synthesize(self, text, voice: VoicePrompt | list, language="auto", *, greedy: bool = False,
                   seed: int | list = 0, max_new_frames: int | None = None, non_streaming_text: bool = False,
                   **sampling):
        """`(wav float32 [N], 24000)` for `text`, or a list of them for a list of texts (one batch).

        The waveform is exactly what `stream` yields for the same arguments, concatenated: the
        streaming codec decoder run over `ref_codes + generated` (ICL), the reference frames'
        samples cut at exactly `T_ref * 1920`. For the reference's own offline decode
        (300-frame chunks, its float cut) use `decode_codes`.
        """
        requests, single = self._requests(text, voice, language, seed, greedy, max_new_frames,
                                          non_streaming_text, sampling)
        _, wavs = self._run(requests, audio=True)
        return (wavs[0], self.sample_rate) if single else [(w, self.sample_rate) for w in wavs]

    def stream(self, text: str, voice: VoicePrompt, language="auto", *, greedy: bool = False, seed: int = 0,
               max_new_frames: int | None = None, non_streaming_text: bool = False,
               **sampling) -> Iterator[np.ndarray]:
        """float32 PCM chunks, each yielded as soon as its frame exists (80 ms per frame)."""
        (request,), _ = self._requests(text, voice, language, seed, greedy, max_new_frames,
                                       non_streaming_text, sampling)
        with self._engine(1, stream_audio=True, max_new_frames=request.max_new_frames or 0) as engine:
            engine.admit(0, request)
            while engine.active_slots():
                out = engine.step().get(0)
                if out is not None and out.pcm.size:
                    yield out.pcm

    @contextlib.contextmanager
    def _engine(self, num_slots: int, *, stream_audio: bool, max_new_frames: int):
        """An idle engine of this shape from a small pool (building one allocates its caches and
        traces the codec state), returned with every slot released when the caller is done."""
        key = (num_slots, _seq_len(max_new_frames), stream_audio)
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
        return BatchEngine(self, num_slots, max_seq_len=max_seq_len, max_text_tokens=max_text_tokens,
                           stream_audio=stream_audio)

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

    # -- pieces shared with the engine ---------------------------------------------------------

    def prompt_layout(self, text: str, voice: VoicePrompt, language: str, non_streaming_text: bool) -> PromptLayout:
        if language.lower() != "auto":
            self.config.talker.language_id(language)  # a clear error for unknown languages
        if voice.speaker_embedding.shape != (self.config.talker.hidden_size,):
            raise ValueError(f"voice speaker_embedding has shape {voice.speaker_embedding.shape}, this model "
                             f"needs ({self.config.talker.hidden_size},): was it made with another model?")
        if voice.ref_codes is not None and voice.ref_codes.shape[1] != self.config.talker.num_code_groups:
            raise ValueError(f"voice ref_codes have {voice.ref_codes.shape[1]} codebooks, "
                             f"expected {self.config.talker.num_code_groups}")
        text_ids = self.tokenizer.text_ids(text)
        ref_ids = None if voice.ref_codes is None else self.tokenizer.ref_text_ids(voice.ref_text)
        return build_layout(self.config, text_ids, language=language, ref_text_ids=ref_ids,
                            num_ref_frames=None if voice.ref_codes is None else len(voice.ref_codes),
                            non_streaming_text=non_streaming_text)

    def decode_parts(self, rows: int | None = None):
        """(DecodeSpec, Weights) for the jitted decode step, built once.

        `rows`: the batch the weights serve. Up to `PACKED_MAX_ROWS` rows, a float32 model on
        CPU gets its bfloat16-valued matrices packed for the CPU kernel (`decode.pack_weights`,
        kept beside the float32 ones).
        """
        if rows is not None and rows <= PACKED_MAX_ROWS and self._packable():
            spec, weights = self.decode_parts()
            if self._packed_weights is None:
                self._packed_weights = pack_weights(weights)
            return spec, self._packed_weights
        if self._decode_parts is None:
            t = self.config.talker
            t_def, p_def, weights = make_weights(self.model.talker, self.model.code_predictor,
                                                 self.config.tts_pad_token_id)
            spec = DecodeSpec(t_def, p_def, eos_id=t.codec_eos_token_id, suppress_start=t.vocab_size - 1024,
                              min_new_tokens=2, groups=t.num_code_groups,
                              unroll_predictor=unroll_predictor_default())
            self._decode_parts = (spec, weights)
        return self._decode_parts

    def _packable(self) -> bool:
        return self.dtype == np.float32 and jax.default_backend() == "cpu" and kernels.available()

    def embed_parts(self):
        spec, weights = self.decode_parts()
        return spec.talker_def, weights.talker, spec.predictor_def, weights.predictor


# Engines of up to this many rows decode with packed bfloat16 weights on CPU (see decode_parts).
PACKED_MAX_ROWS = 4


def _seq_len(max_new_frames: int) -> int:
    """Cache length for a request of `max_new_frames`: 2048, or more in steps of 1024."""
    return max(2048, -(-(max_new_frames + 1024) // 1024) * 1024)


__all__ = ["GenerationRequest", "Qwen3TTS", "VoicePrompt"]
