"""`BatchEngine`: continuous batching over a fixed number of slots, PCM out as frames are made.

One engine owns the device state of `num_slots` rows (talker KV cache, sampling state) and a
streaming codec decoder with one stream per slot. `admit` prefills a free slot with a new
request between frames; `step` advances every active slot by one frame in one device call and
decodes the new frames to PCM; `release` frees a slot at once (cancel, disconnect).
Not thread-safe: drive an engine from one thread (the server's device worker does).
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from typing import TYPE_CHECKING

import jax
import numpy as np

from qwen3tts_jax import decode
from qwen3tts_jax.prompt import bucket, embed_layout, embed_text_ids
from qwen3tts_jax.sampling import SamplingParams
from qwen3tts_jax.streaming_decoder import StreamingDecoder
from qwen3tts_jax.voice import VoicePrompt

if TYPE_CHECKING:
    from qwen3tts_jax.api import Qwen3TTS


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """One utterance to generate; defaults are the released `generation_config.json` values."""

    text: str
    voice: VoicePrompt
    language: str = "auto"
    seed: int = 0
    greedy: bool = False
    max_new_frames: int | None = None
    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.05
    subtalker_temperature: float = 0.9
    subtalker_top_k: int = 50
    subtalker_top_p: float = 1.0
    non_streaming_text: bool = False


@dataclasses.dataclass
class SlotOutput:
    pcm: np.ndarray    # float32 samples that became final this step (may be empty)
    codes: np.ndarray  # int32 [n, 16] frames made this step
    finished: bool     # the utterance ended (EOS or max_new_frames); the slot is free again


@dataclasses.dataclass
class _Slot:
    request: GenerationRequest
    prompt_len: int
    frames: int = 0

    @property
    def next_slot(self) -> int:
        """The cache slot the row's next talker step writes (its prompt, then one per frame)."""
        return self.prompt_len + self.frames


def _check_request(r: GenerationRequest) -> None:
    if not isinstance(r.text, str) or not r.text.strip():
        raise ValueError("text is empty")
    if not isinstance(r.voice, VoicePrompt):
        raise ValueError("voice must be a VoicePrompt (see Qwen3TTS.create_voice_prompt)")
    if not r.greedy and not (r.temperature > 0 and r.subtalker_temperature > 0):
        raise ValueError("temperature must be > 0 (use greedy=True for argmax decoding)")
    if not (0 < r.top_p <= 1 and 0 < r.subtalker_top_p <= 1):
        raise ValueError("top_p must be in (0, 1]")
    if r.top_k < 0 or r.subtalker_top_k < 0:
        raise ValueError("top_k must be >= 0 (0 disables it)")
    if not r.repetition_penalty > 0:
        raise ValueError("repetition_penalty must be > 0")
    if r.max_new_frames is not None and r.max_new_frames < 1:
        raise ValueError("max_new_frames must be >= 1")


class BatchEngine:
    def __init__(self, tts: Qwen3TTS, num_slots: int = 1, *, max_seq_len: int = 2048,
                 max_text_tokens: int = 512, stream_audio: bool = True):
        if num_slots < 1:
            raise ValueError("num_slots must be >= 1")
        self.tts = tts
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len
        self.max_text_tokens = max_text_tokens
        self.sample_rate = tts.sample_rate
        self.spec, self.weights = tts.decode_parts(num_slots)
        cfg = tts.config.talker
        self.state = decode.empty_state(num_slots, max_seq_len, max_text_tokens, cfg, tts.dtype)
        self.stream_audio = stream_audio
        self.decoder = StreamingDecoder(tts.model.codec_decoder, num_slots) if stream_audio else None
        self._slots: dict[int, _Slot] = {}
        self._voice_states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # -- slots -----------------------------------------------------------------------------

    def active_slots(self) -> list[int]:
        return sorted(self._slots)

    def free_slots(self) -> list[int]:
        return [s for s in range(self.num_slots) if s not in self._slots]

    def admit(self, slot: int, request: GenerationRequest) -> None:
        """Prefill `slot` (must be free) with `request`. Raises ValueError on bad input."""
        if not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} out of range 0..{self.num_slots - 1}")
        if slot in self._slots:
            raise ValueError(f"slot {slot} is busy")
        _check_request(request)
        tts, r = self.tts, request
        layout = tts.prompt_layout(r.text, r.voice, r.language, r.non_streaming_text)
        n = len(layout)
        room = self.max_seq_len - n
        if room < 1:
            raise ValueError(f"the prompt has {n} positions; this engine holds {self.max_seq_len}")
        if len(layout.trailing_ids) > self.max_text_tokens:
            raise ValueError(f"text too long: {len(layout.trailing_ids)} tokens to feed, this engine takes "
                             f"{self.max_text_tokens}; split the text into sentences")
        max_frames = min(r.max_new_frames or tts.default_max_new_frames, room)
        embeds = embed_layout(*tts.embed_parts(), layout, r.voice.speaker_embedding, r.voice.ref_codes,
                              min(bucket(n), self.max_seq_len))
        trailing_vecs = embed_text_ids(tts.embed_parts()[0], tts.embed_parts()[1], layout.trailing_ids,
                                       self.max_text_tokens)
        one = functools.partial(SamplingParams.make, 1)
        talker_p = one(r.temperature, r.top_k, r.top_p, r.greedy)
        sub_p = one(r.subtalker_temperature, r.subtalker_top_k, r.subtalker_top_p, r.greedy)
        self.state = decode.prefill(
            self.spec, self.weights, self.state, np.int32(slot), embeds, np.int32(n), trailing_vecs,
            np.int32(len(layout.trailing_ids)), jax.tree.map(lambda x: x[0], talker_p),
            jax.tree.map(lambda x: x[0], sub_p), np.float32(r.repetition_penalty), np.uint32(r.seed % 2**32),
            np.int32(max_frames))
        if self.decoder is not None:
            self.decoder.state = self.decoder.set_row(self.decoder.state, slot, self._voice_state(r.voice))
        self._slots[slot] = _Slot(r, n)

    def warmup(self) -> None:
        """Compile the frame step for every attention span this engine can reach, so a stream
        that grows into a longer span never stalls the others on a compile. Needs no active slot."""
        if self._slots:
            raise RuntimeError("warm up before admitting requests")
        span = decode.attend_bucket(1, self.max_seq_len)
        while True:
            self.state, _ = decode.decode_frames(self.spec, self.weights, self.state, 1, span)
            if span >= self.max_seq_len:
                break
            span = decode.attend_bucket(span + 1, self.max_seq_len)

    def release(self, slot: int) -> None:
        """Free `slot` now; whatever it was generating is dropped."""
        if self._slots.pop(slot, None) is not None:
            self.state = decode.release(self.state, np.int32(slot))

    # -- decoding ---------------------------------------------------------------------------

    def step(self) -> dict[int, SlotOutput]:
        """One frame for every active slot: {slot: SlotOutput} for the slots that were active."""
        if not self._slots:
            return {}
        needed = max(s.next_slot for s in self._slots.values()) + 1
        span = decode.attend_bucket(needed, self.max_seq_len)
        self.state, (codes, made, finished) = decode.decode_frames(self.spec, self.weights, self.state, 1, span)
        pcm = None
        if self.decoder is not None:
            pcm, self.decoder.state = self.decoder.step(self.decoder.state, codes, made)
        codes, n_valid, finished = jax.device_get((codes, made, finished))
        pcm = None if pcm is None else np.asarray(pcm)
        spf = self.tts.samples_per_frame
        out = {}
        for slot in list(self._slots):
            n = int(n_valid[slot])
            out[slot] = SlotOutput(
                pcm=pcm[slot, :n * spf] if pcm is not None else np.zeros(0, np.float32),
                codes=np.ascontiguousarray(codes[slot, :n]), finished=bool(finished[slot]))
            self._slots[slot].frames += n
            if finished[slot]:
                del self._slots[slot]
        return out

    def _voice_state(self, voice: VoicePrompt):
        """The codec decoder's stream state after the voice's reference codes (ICL), cached.

        The reference decodes `cat(ref_codes, generated)`, so the generated audio is decoded
        with the reference frames as left context; x-vector-only voices start from zero.
        """
        state = self._voice_states.get(voice)
        if state is None:
            codes = np.zeros((0, self.tts.config.talker.num_code_groups), np.int32)
            state = self.decoder.prime(codes if voice.ref_codes is None else voice.ref_codes)
            self._voice_states[voice] = state
        return state
