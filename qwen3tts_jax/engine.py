"""`BatchEngine`: continuous batching over a fixed number of slots, PCM out as frames are made.

One engine owns the device state of `num_slots` rows (talker KV cache, sampling state) and a
streaming codec decoder with one stream per slot. `admit` prefills a free slot with a new
request between frames; `step` advances every active slot by one frame in one device call and
decodes the new frames to PCM; `release` frees a slot at once (cancel, disconnect).
Not thread-safe: drive an engine from one thread (the server's device worker does).

Idle slots cost nothing: the engine keeps its active requests in the first rows of its state
(a slot is the caller's name for a request; a row is where it lives) and each step computes
only `buckets.active_rows(n)` rows, so a 16-slot engine with one busy slot runs a 1-row step.
When a request ends, the last row moves into its place (`generation.move_row`: the row's
state and the KV cache slots it has written).

The engine is given everything it uses: a `PromptBuilder` (text -> prompt layout), the
`RowParts` (spec and weights of the frame step) and the codec decoder. It never reaches
back into the `Qwen3TTS` facade, which only builds engines from those parts.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref

import jax
import numpy as np

from qwen3tts_jax import buckets, generation
from qwen3tts_jax.codec_decoder import CodecDecoder
from qwen3tts_jax.generation import RowParts
from qwen3tts_jax.prompt import PromptBuilder, embed_layout, embed_text_ids
from qwen3tts_jax.request import GenerationRequest
from qwen3tts_jax.sampling import SamplingParams
from qwen3tts_jax.streaming_decoder import StreamingDecoder
from qwen3tts_jax.voice import VoicePrompt


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


class BatchEngine:
    """`num_slots` rows of generation; see the module docstring.

    `prompts`: turns a request's text, voice and language into a prompt layout. `parts`: the
    frame step's spec and weights by rows computed (`generation.RowParts`). `codec_decoder`:
    the speech tokenizer's decoder, for PCM (`stream_audio`). `max_seq_len` bounds prompt +
    generated frames per row; `max_text_tokens` bounds the text fed during decoding;
    `default_max_new_frames` caps a request that names no `max_new_frames`; `sample_rate` is
    the codec's output rate.
    """

    def __init__(self, prompts: PromptBuilder, parts: RowParts, codec_decoder: CodecDecoder,
                 num_slots: int = 1, *, max_seq_len: int = 2048, max_text_tokens: int = 512,
                 stream_audio: bool = True, default_max_new_frames: int | None = None,
                 sample_rate: int):
        if num_slots < 1:
            raise ValueError("num_slots must be >= 1")
        self.prompts = prompts
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len
        self.max_text_tokens = max_text_tokens
        self.default_max_new_frames = default_max_new_frames
        self.parts = parts
        # What a step over all `num_slots` rows decodes with; prefill (one row) uses `_one`.
        full = parts.for_rows(num_slots)
        self.spec, self.weights = full.spec, full.weights
        self._one = parts.for_rows(1)
        self._embed_weights = (self._one.spec.talker_def, self._one.weights.talker,
                               self._one.spec.predictor_def, self._one.weights.predictor)
        self.state = generation.empty_state(num_slots, max_seq_len, max_text_tokens, prompts.config.talker,
                                            full.dtype)
        self.sample_rate = sample_rate
        self.samples_per_frame = codec_decoder.cfg.samples_per_frame
        self.stream_audio = stream_audio
        self.decoder = StreamingDecoder(codec_decoder, num_slots) if stream_audio else None
        self._slots: dict[int, _Slot] = {}
        self._rows: list[int] = []  # row r of the state holds slot self._rows[r]; active rows come first
        self._voice_states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._no_xvector = np.zeros((prompts.config.talker.hidden_size,), np.float32)
        self._zero_state = None

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
        request.check()
        r = request
        layout = self.prompts.layout(r.text, r.voice, r.language, r.non_streaming_text, speaker=r.speaker,
                                     instruct=r.instruct)
        n = len(layout)
        room = self.max_seq_len - n
        if room < 1:
            raise ValueError(f"the prompt has {n} positions; this engine holds {self.max_seq_len}")
        if len(layout.trailing_ids) > self.max_text_tokens:
            raise ValueError(f"text too long: {len(layout.trailing_ids)} tokens to feed, this engine takes "
                             f"{self.max_text_tokens}; split the text into sentences")
        max_frames = min(r.max_new_frames or self.default_max_new_frames or room, room)
        # No x-vector (CustomVoice, VoiceDesign): a zero vector that the layout's speaker row (NONE) never selects.
        speaker = self._no_xvector if r.voice is None else r.voice.speaker_embedding
        ref_codes = None if r.voice is None else r.voice.ref_codes
        embeds = embed_layout(*self._embed_weights, layout, speaker, ref_codes,
                              min(buckets.prompt_rows(n), self.max_seq_len), self.spec.groups)
        trailing_vecs = embed_text_ids(*self._embed_weights[:2], layout.trailing_ids, self.max_text_tokens)
        one = functools.partial(SamplingParams.make, 1)
        talker_p = one(r.temperature, r.top_k, r.top_p, r.greedy)
        sub_p = one(r.subtalker_temperature, r.subtalker_top_k, r.subtalker_top_p, r.greedy)
        row = len(self._rows)
        self.state = generation.prefill(
            self._one.spec, self._one.weights, self.state, np.int32(row), embeds, np.int32(n), trailing_vecs,
            np.int32(len(layout.trailing_ids)), jax.tree.map(lambda x: x[0], talker_p),
            jax.tree.map(lambda x: x[0], sub_p), np.float32(r.repetition_penalty), np.uint32(r.seed % 2**32),
            np.int32(max_frames))
        if self.decoder is not None:
            self.decoder.state = self.decoder.set_row(self.decoder.state, row, self._voice_state(r.voice))
        self._slots[slot] = _Slot(r, n)
        self._rows.append(slot)

    def _spans(self) -> list[int]:
        spans = [buckets.attend_span(1, self.max_seq_len)]
        while spans[-1] < self.max_seq_len:
            spans.append(buckets.attend_span(spans[-1] + 1, self.max_seq_len))
        return spans

    def _row_counts(self) -> list[int]:
        return sorted({buckets.active_rows(n, self.num_slots) for n in range(1, self.num_slots + 1)})

    def warmup(self) -> None:
        """Compile the frame step for every row count and attention span this engine can reach,
        and the row move for every span, so that a stream growing into a longer span, or a
        batch growing or shrinking, never stalls the others on a compile. Needs no active slot.

        On XLA's CPU backend every compiled step holds hundreds of memory mappings (16 slots and
        a 2048-frame cache: 25 steps, ~18,000 mappings), which count against the kernel's
        `vm.max_map_count` (65530 by default); `jax.clear_caches()` releases them."""
        if self._slots:
            raise RuntimeError("warm up before admitting requests")
        for span in self._spans():
            for rows in self._row_counts():
                parts = self.parts.for_rows(rows)
                self.state, _ = generation.generate_frames(parts.spec, parts.weights, self.state, 1, span, rows)
            if self.num_slots > 1:
                self.state = generation.move_row(self.state, np.int32(1), np.int32(0), span)
        if self.decoder is not None:  # its step depends on the row count only, not the span
            for rows in self._row_counts():
                codes = np.zeros((rows, 1, self.spec.groups), np.int32)
                _, self.decoder.state = self.decoder.step(self.decoder.state, codes, np.zeros(rows, np.int32))
            if self.num_slots > 1:
                self.decoder.state = self.decoder.move_row(self.decoder.state, 1, 0)

    def release(self, slot: int) -> None:
        """Free `slot` now; whatever it was generating is dropped."""
        if self._slots.pop(slot, None) is not None:
            row = self._rows.index(slot)
            self.state = generation.release(self.state, np.int32(row))
            self._drop_row(row)

    def _drop_row(self, row: int) -> None:
        """Row `row` is done: the last active row moves into it, so active rows stay first."""
        last = len(self._rows) - 1
        if row != last:
            moved = self._slots[self._rows[last]]
            span = buckets.attend_span(moved.next_slot + 1, self.max_seq_len)  # every slot it has written
            self.state = generation.move_row(self.state, np.int32(last), np.int32(row), span)
            if self.decoder is not None:
                self.decoder.state = self.decoder.move_row(self.decoder.state, last, row)
            self._rows[row] = self._rows[last]
        self._rows.pop()

    # -- generation -------------------------------------------------------------------------

    def step(self) -> dict[int, SlotOutput]:
        """One frame for every active slot: {slot: SlotOutput} for the slots that were active."""
        if not self._slots:
            return {}
        needed = max(s.next_slot for s in self._slots.values()) + 1
        span = buckets.attend_span(needed, self.max_seq_len)
        rows = buckets.active_rows(len(self._rows), self.num_slots)
        parts = self.parts.for_rows(rows)
        self.state, (codes, made, finished) = generation.generate_frames(parts.spec, parts.weights, self.state, 1,
                                                                         span, rows)
        pcm = None
        if self.decoder is not None:
            pcm, self.decoder.state = self.decoder.step(self.decoder.state, codes, made)
        codes, n_valid, finished = jax.device_get((codes, made, finished))
        pcm = None if pcm is None else np.asarray(pcm)
        spf = self.samples_per_frame
        out = {}
        done = []
        for row, slot in enumerate(self._rows):
            n = int(n_valid[row])
            out[slot] = SlotOutput(
                pcm=pcm[row, :n * spf] if pcm is not None else np.zeros(0, np.float32),
                codes=np.ascontiguousarray(codes[row, :n]), finished=bool(finished[row]))
            self._slots[slot].frames += n
            if finished[row]:
                done.append(row)
        for row in reversed(done):  # from the last: a moved row is never one still to drop
            del self._slots[self._rows[row]]
            self._drop_row(row)
        return out

    def _voice_state(self, voice: VoicePrompt | None):
        """The codec decoder's stream state after the voice's reference codes (ICL), cached.

        The reference decodes `cat(ref_codes, generated)`, so the generated audio is decoded
        with the reference frames as left context; x-vector-only voices, preset speakers and
        designed voices (no voice prompt) start from zero.
        """
        if voice is None or voice.ref_codes is None:
            if self._zero_state is None:
                self._zero_state = self.decoder.prime(np.zeros((0, self.spec.groups), np.int32))
            return self._zero_state
        state = self._voice_states.get(voice)
        if state is None:
            state = self.decoder.prime(voice.ref_codes)
            self._voice_states[voice] = state
        return state
