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

Text that arrives while speaking (an LLM writing its answer): `open(slot, request)` takes a
request whose text is only the start (maybe empty), `append_text(slot, text)` the pieces as
they come, `end_text(slot)` the end. The pieces go through a `TextStream`, whose committed ids
are always the start of the whole text's ids; the slot is prefilled as soon as its prompt is
known (`PromptBuilder.layout_of_ids(text_open=True)`), its ids are appended to the row's
text ring between steps, and a row whose next text id has not arrived waits with its state
frozen (`generation`), so its codes are those of the whole text spoken at once. A step where
every row waits makes no device call (`waiting`). The same ring carries a whole text longer
than the buffer: the rest waits on the host and is appended as the row reads (backpressure).

The engine is given everything it uses: a `PromptBuilder` (text -> prompt layout), the
`RowParts` (spec and weights of the frame step) and the codec decoder. It never reaches
back into the `Qwen3TTS` facade, which only builds engines from those parts.
"""

from __future__ import annotations

import dataclasses
import functools
import time
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
from qwen3tts_jax.talker import TEXT_BLOCK
from qwen3tts_jax.text_stream import TextStream
from qwen3tts_jax.voice import VoicePrompt

# Text ids appended to a row in one step at most: the row reads one per frame, so this keeps its
# ring well ahead, and the append compiles for two sizes only (16 and 32).
APPEND_IDS = 32


class SlotError(RuntimeError):
    """A step failed because of these slots alone (their state, their request): a caller can
    end just them and go on stepping the others."""

    def __init__(self, slots: list[int], message: str):
        super().__init__(message)
        self.slots = list(slots)


@dataclasses.dataclass
class SlotOutput:
    pcm: np.ndarray    # float32 samples that became final this step (may be empty)
    codes: np.ndarray  # int32 [n, 16] frames made this step
    finished: bool     # the utterance ended (EOS or max_new_frames); the slot is free again
    waiting: bool = False  # made nothing: its next text has not arrived (an open text)
    text_wait_s: float = 0.0  # time this utterance has spent waiting for text so far


@dataclasses.dataclass
class _Slot:
    request: GenerationRequest
    prompt_len: int = 0
    frames: int = 0
    text: TextStream | None = None  # the text as it arrives; None: all of it came with the request
    queued: list[int] = dataclasses.field(default_factory=list)  # ids not yet on the device, EOS last
    on_device: int = 0  # text ids written to the row's ring (its trailing_len)
    closed: bool = True  # every text id, the EOS included, is on the device
    waiting_since: float | None = None
    waited_s: float = 0.0

    @property
    def next_slot(self) -> int:
        """The cache slot the row's next talker step writes (its prompt, then one per frame)."""
        return self.prompt_len + self.frames

    @property
    def ready(self) -> bool:
        """Whether its next frame has its text (the device's rule, `generation._frame`)."""
        return self.closed or self.frames < self.on_device

    def note_wait(self, now: float) -> None:
        if self.ready:
            if self.waiting_since is not None:
                self.waited_s += now - self.waiting_since
                self.waiting_since = None
        elif self.waiting_since is None:
            self.waiting_since = now

    def wait_s(self, now: float) -> float:
        return self.waited_s + (now - self.waiting_since if self.waiting_since is not None else 0.0)


class BatchEngine:
    """`num_slots` rows of generation; see the module docstring.

    `prompts`: turns a request's text, voice and language into a prompt layout. `parts`: the
    frame step's spec and weights by rows computed (`generation.RowParts`). `codec_decoder`:
    the speech tokenizer's decoder, for PCM (`stream_audio`). `max_seq_len` bounds prompt +
    generated frames per row; `max_text_tokens` is the size of a row's text ring (a multiple
    of 16; longer texts wait on the host and are fed as the row reads);
    `default_max_new_frames` caps a request that names no `max_new_frames`; `sample_rate` is
    the codec's output rate.
    """

    def __init__(self, prompts: PromptBuilder, parts: RowParts, codec_decoder: CodecDecoder,
                 num_slots: int = 1, *, max_seq_len: int = 2048, max_text_tokens: int = 512,
                 stream_audio: bool = True, default_max_new_frames: int | None = None,
                 sample_rate: int):
        if num_slots < 1:
            raise ValueError("num_slots must be >= 1")
        if max_text_tokens < TEXT_BLOCK or max_text_tokens % TEXT_BLOCK:
            raise ValueError(f"max_text_tokens must be a multiple of {TEXT_BLOCK}, got {max_text_tokens}")
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
        self._codec_decoder = codec_decoder
        self.decoder = StreamingDecoder(codec_decoder, num_slots) if stream_audio else None
        self._slots: dict[int, _Slot] = {}  # prefilled: each has a row
        self._opening: dict[int, _Slot] = {}  # open texts whose prompt still needs text
        self._rows: list[int] = []  # row r of the state holds slot self._rows[r]; active rows come first
        self._voice_states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._no_xvector = np.zeros((prompts.config.talker.hidden_size,), np.float32)
        self._zero_state = None

    # -- slots -----------------------------------------------------------------------------

    def active_slots(self) -> list[int]:
        """Busy slots: generating, waiting for text, or open and not yet prefilled."""
        return sorted([*self._slots, *self._opening])

    def free_slots(self) -> list[int]:
        return [s for s in range(self.num_slots) if s not in self._slots and s not in self._opening]

    @property
    def waiting(self) -> bool:
        """Every busy slot waits for text: `step` would make no device call until text comes."""
        return bool(self._slots or self._opening) and not any(s.ready or s.queued for s in self._slots.values())

    def _check_free(self, slot: int) -> None:
        if not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} out of range 0..{self.num_slots - 1}")
        if slot in self._slots or slot in self._opening:
            raise ValueError(f"slot {slot} is busy")

    def admit(self, slot: int, request: GenerationRequest) -> None:
        """Prefill `slot` (must be free) with `request`, its whole text. Raises ValueError on bad input."""
        self._check_free(slot)
        request.check()
        r = request
        layout = self.prompts.layout(r.text, r.voice, r.language, r.non_streaming_text, speaker=r.speaker,
                                     instruct=r.instruct)
        self._prefill(slot, _Slot(r), layout)

    def open(self, slot: int, request: GenerationRequest) -> None:
        """Reserve `slot` (must be free) for `request`, whose text is only its start (maybe empty):
        the rest comes through `append_text` and `end_text`. The streaming-text layout is used
        (`non_streaming_text` must not be True). Raises ValueError on bad input."""
        self._check_free(slot)
        r = request
        r.check(text_open=True)
        self.prompts.check(r.voice, r.language, r.speaker, r.instruct)
        if r.non_streaming_text:
            raise ValueError("text that arrives while speaking needs non_streaming_text=False (or None)")
        self._opening[slot] = _Slot(r, text=TextStream(self.prompts.tokenizer), closed=False)
        if r.text:
            self.append_text(slot, r.text)

    def _open_text(self, slot: int) -> _Slot:
        s = self._opening.get(slot) or self._slots.get(slot)
        if s is None or s.text is None:
            raise ValueError(f"slot {slot} has no open text")
        if s.text.ended:
            raise ValueError(f"slot {slot}'s text has ended")
        return s

    def append_text(self, slot: int, text: str) -> None:
        """More of `slot`'s open text (any size, in order); it joins the row between steps."""
        s = self._open_text(slot)
        new = s.text.append(text)
        if slot in self._opening:
            layout = self.prompts.layout_of_ids(s.text.committed, s.request.voice, s.request.language, False,
                                                speaker=s.request.speaker, instruct=s.request.instruct,
                                                text_open=True)
            if layout is not None:  # the prompt is known: prefill now, the rest follows as it comes
                del self._opening[slot]
                self._prefill(slot, s, layout)
        else:
            s.queued += new

    def end_text(self, slot: int, max_new_frames: int | None = None) -> None:
        """`slot`'s text is complete: its last ids and the text's EOS follow. `max_new_frames`
        lowers the row's frame budget now that the text's length is known (a server gives a
        whole text a budget by its length; a streamed one gets the same, here). ValueError (and
        the slot freed) if the text had no words (none, or only whitespace, as `admit` refuses)."""
        s = self._open_text(slot)
        try:
            if s.text.blank:
                raise ValueError("text is empty")
            new = s.text.end()
        except ValueError:
            self.release(slot)
            raise
        if max_new_frames is not None:
            budget = min(max_new_frames, s.request.max_new_frames or max_new_frames)
            s.request = dataclasses.replace(s.request, max_new_frames=max(1, budget))
            if slot in self._slots:  # already prefilled: its row's budget on the device too
                row = self._rows.index(slot)
                self.state = dataclasses.replace(
                    self.state, max_frames=self.state.max_frames.at[row].min(s.request.max_new_frames))
        if slot in self._opening:  # never prefilled (a short text, an ICL clone): all of it at once
            del self._opening[slot]
            r = s.request
            layout = self.prompts.layout_of_ids(s.text.committed, r.voice, r.language, False, speaker=r.speaker,
                                                instruct=r.instruct)
            self._prefill(slot, s, layout)
        else:
            s.queued += [*new, self.prompts.config.tts_eos_token_id]

    def _prefill(self, slot: int, s: _Slot, layout) -> None:
        """Prefill a free row with `layout`; text past the ring's size waits in `s.queued`."""
        r = s.request
        n = len(layout)
        room = self.max_seq_len - n
        if room < 1:
            raise ValueError(f"the prompt has {n} positions; this engine holds {self.max_seq_len}")
        max_frames = min(r.max_new_frames or self.default_max_new_frames or room, room)
        # No x-vector (CustomVoice, VoiceDesign): a zero vector that the layout's speaker row (NONE) never selects.
        speaker = self._no_xvector if r.voice is None else r.voice.speaker_embedding
        ref_codes = None if r.voice is None else r.voice.ref_codes
        embeds = embed_layout(*self._embed_weights, layout, speaker, ref_codes,
                              min(buckets.prompt_rows(n), self.max_seq_len), self.spec.groups)
        head = layout.trailing_ids[:self.max_text_tokens]
        s.prompt_len, s.on_device = n, len(head)
        s.queued = [int(i) for i in layout.trailing_ids[self.max_text_tokens:]]
        s.closed = (s.text is None or s.text.ended) and not s.queued
        trailing_vecs = embed_text_ids(*self._embed_weights[:2], head, self.max_text_tokens)
        one = functools.partial(SamplingParams.make, 1)
        talker_p = one(r.temperature, r.top_k, r.top_p, r.greedy)
        sub_p = one(r.subtalker_temperature, r.subtalker_top_k, r.subtalker_top_p, r.greedy)
        row = len(self._rows)
        self.state = generation.prefill(
            self._one.spec, self._one.weights, self.state, np.int32(row), embeds, np.int32(n), trailing_vecs,
            np.int32(len(head)), jax.tree.map(lambda x: x[0], talker_p),
            jax.tree.map(lambda x: x[0], sub_p), np.float32(r.repetition_penalty), np.uint32(r.seed % 2**32),
            np.int32(max_frames), np.bool_(not s.closed))
        if self.decoder is not None:
            self.decoder.state = self.decoder.set_row(self.decoder.state, row, self._voice_state(r.voice))
        self._slots[slot] = s
        self._rows.append(slot)

    def _feed_text(self) -> None:
        """Append queued text ids to their rows' rings, as much as each ring has room for."""
        for row, slot in enumerate(self._rows):
            s = self._slots[slot]
            room = self.max_text_tokens - (s.on_device - s.frames)
            n = min(room, len(s.queued), APPEND_IDS)
            if n <= 0:
                continue
            close = (s.text is None or s.text.ended) and n == len(s.queued)
            ids = np.zeros((buckets.text_ids(n, self.max_text_tokens),), np.int32)
            ids[:n] = s.queued[:n]
            self.state = generation.append_text(self._one.spec, self._one.weights, self.state, np.int32(row), ids,
                                                np.int32(n), np.bool_(close))
            s.on_device += n
            s.queued = s.queued[n:]
            s.closed = close

    def _spans(self) -> list[int]:
        spans = [buckets.attend_span(1, self.max_seq_len)]
        while spans[-1] < self.max_seq_len:
            spans.append(buckets.attend_span(spans[-1] + 1, self.max_seq_len))
        return spans

    def _row_counts(self) -> list[int]:
        return sorted({buckets.active_rows(n, self.num_slots) for n in range(1, self.num_slots + 1)})

    def warmup(self) -> None:
        """Compile the frame step for every row count and attention span this engine can reach,
        the row move for every span and the text append for every size, so that a stream
        growing into a longer span, a batch growing or shrinking, or text arriving, never
        stalls the others on a compile. Needs no active slot.

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
        for size in sorted({buckets.text_ids(n, self.max_text_tokens) for n in (1, APPEND_IDS)}):
            # text appends (count 0: row 0 is free and stays so)
            self.state = generation.append_text(self._one.spec, self._one.weights, self.state, np.int32(0),
                                                np.zeros((size,), np.int32), np.int32(0), np.bool_(True))
        if self.decoder is not None:  # its step depends on the row count only, not the span
            for rows in self._row_counts():
                codes = np.zeros((rows, 1, self.spec.groups), np.int32)
                _, self.decoder.state = self.decoder.step(self.decoder.state, codes, np.zeros(rows, np.int32))
            if self.num_slots > 1:
                self.decoder.state = self.decoder.move_row(self.decoder.state, 1, 0)

    def reset(self) -> None:
        """Drop every slot and start from fresh device state: after a step that failed midway
        (its donated buffers may be gone), the engine is usable again."""
        self._slots.clear()
        self._opening.clear()
        self._rows.clear()
        full = self.parts.for_rows(self.num_slots)
        self.state = generation.empty_state(self.num_slots, self.max_seq_len, self.max_text_tokens,
                                            self.prompts.config.talker, full.dtype)
        if self.decoder is not None:
            self.decoder = StreamingDecoder(self._codec_decoder, self.num_slots)

    def release(self, slot: int) -> None:
        """Free `slot` now; whatever it was generating is dropped."""
        self._opening.pop(slot, None)
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
        self._feed_text()
        now = time.monotonic()
        for s in self._slots.values():
            s.note_wait(now)
        if not any(s.ready for s in self._slots.values()):
            return {}  # every row waits for text: no device call
        waiting = [not self._slots[slot].ready for slot in self._rows]
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
                codes=np.ascontiguousarray(codes[row, :n]), finished=bool(finished[row]), waiting=waiting[row],
                text_wait_s=self._slots[slot].wait_s(now))
            self._slots[slot].frames += n
            if finished[row]:
                done.append(row)
        for row in reversed(done):  # from the last: a moved row is never one still to drop
            del self._slots[self._rows[row]]
            self._drop_row(row)
        now = time.monotonic()
        for s in self._slots.values():  # a row that just read its last text starts waiting now
            s.note_wait(now)
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
