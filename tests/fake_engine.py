"""A deterministic stand-in for the Qwen3TTS / BatchEngine contract, for the server tests.

It implements exactly the surface the server uses (see server/backend.py): `create_voice_prompt`,
`VoicePrompt.save/load`, `synthesize`, `batch_engine(num_slots)` with `admit/step/release/
active_slots/sample_rate`, `languages`. The audio is a tone whose pitch depends on
(text, voice, seed), one 1920-sample frame per step, so sessions can be told apart and the
streamed PCM can be compared with `synthesize` exactly. `step_delay` simulates device time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

# The real request and output types: the double fakes the model, not the contract.
from qwen3tts_jax.engine import SlotError, SlotOutput
from qwen3tts_jax.request import GenerationRequest

SAMPLE_RATE = 24000
FRAME = 1920
LANGUAGES = ["Chinese", "English", "German", "Italian", "Portuguese", "Spanish", "Japanese",
             "Korean", "French", "Russian"]


class FakeVoicePrompt:
    def __init__(self, key: str, x_vector_only: bool):
        self.key = key
        self.x_vector_only = x_vector_only

    def without_reference(self) -> FakeVoicePrompt:
        return self if self.x_vector_only else FakeVoicePrompt(self.key + "-xv", True)

    def save(self, path) -> None:
        with open(path, "wb") as f:
            np.savez(f, key=np.array(self.key), xvec=np.array(self.x_vector_only))

    @staticmethod
    def from_key(fake: FakeTTS, reference, transcript) -> FakeVoicePrompt:
        """The prompt `fake.create_voice_prompt` gives, without counting a computation."""
        data = Path(reference).read_bytes()
        key = hashlib.sha256(data + (transcript or "").encode()).hexdigest()[:16]
        return FakeVoicePrompt(key, transcript is None)

    @classmethod
    def load(cls, path) -> FakeVoicePrompt:
        with np.load(path) as z:
            return cls(str(z["key"]), bool(z["xvec"]))


def _frames_for(req: GenerationRequest) -> int:
    if req.max_new_frames is not None:
        return req.max_new_frames
    return 3 + len(req.text) // 8


def _tone(req: GenerationRequest, start: int, n: int) -> np.ndarray:
    h = hashlib.sha256(f"{req.text}|{req.voice.key}|{req.seed}".encode()).digest()
    freq = 100.0 + int.from_bytes(h[:4], "little") % 2000
    t = (np.arange(start, start + n) / SAMPLE_RATE).astype(np.float64)
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _check(req: GenerationRequest) -> None:
    if not req.text.strip():
        raise ValueError("empty text")
    if req.language.lower() not in [x.lower() for x in LANGUAGES] + ["auto"]:
        raise ValueError(f"unknown language {req.language}")


class FakeBatchEngine:
    sample_rate = SAMPLE_RATE

    def __init__(self, num_slots: int, step_delay: float = 0.0, owner: FakeTTS | None = None):
        self.num_slots = num_slots
        self.step_delay = step_delay
        self.owner = owner
        self._slots: dict[int, list] = {}  # slot -> [request, frames_done, total]
        self._open: dict[int, tuple] = {}  # slot -> (request, text pieces): a text still arriving
        self._thread: int | None = None
        self.steps = 0
        self.admit_log: list[tuple[int, str]] = []

    def _same_thread(self) -> None:
        ident = threading.get_ident()
        if self._thread is None:
            self._thread = ident
        assert self._thread == ident, "BatchEngine driven from two threads"

    def admit(self, slot: int, request: GenerationRequest) -> None:
        self._same_thread()
        if not 0 <= slot < self.num_slots or slot in self._slots:
            raise ValueError(f"slot {slot} not free")
        _check(request)
        if "__explode__" in request.text:
            raise RuntimeError("simulated device failure")
        self._slots[slot] = [request, 0, _frames_for(request)]
        self.admit_log.append((slot, request.text))

    # Streamed text, as the real engine takes it; the fake's tone depends on the whole text, so
    # it speaks only once the text has ended (until then the slot waits).
    def open(self, slot: int, request: GenerationRequest) -> None:
        self._same_thread()
        if not 0 <= slot < self.num_slots or slot in self._slots or slot in self._open:
            raise ValueError(f"slot {slot} not free")
        if "__early__" in request.text:  # speaks its first piece at once: its audio ends before its text
            return self.admit(slot, request)
        self._open[slot] = (request, [request.text])

    def append_text(self, slot: int, text: str) -> None:
        self._same_thread()
        if slot in self._slots:
            return
        if slot not in self._open:
            raise ValueError(f"slot {slot} has no open text")
        self._open[slot][1].append(text)

    def end_text(self, slot: int, max_new_frames: int | None = None) -> None:
        self._same_thread()
        if slot in self._slots:
            return
        request, pieces = self._open.pop(slot)
        if max_new_frames is not None:  # the budget lowered at the end, as the real engine does
            request = dataclasses.replace(request, max_new_frames=min(max_new_frames, request.max_new_frames
                                                                      or max_new_frames))
        self.admit(slot, dataclasses.replace(request, text="".join(pieces)))

    @property
    def waiting(self) -> bool:
        return bool(self._open) and not self._slots

    def step(self) -> dict[int, SlotOutput]:
        self._same_thread()
        if not self._slots:
            return {}  # nothing, or only texts still arriving: no "device" step
        if self.step_delay:
            time.sleep(self.step_delay)
        self.steps += 1
        poisoned = [slot for slot, (req, done, _) in self._slots.items() if "__poison__" in req.text and done >= 2]
        if poisoned:  # a request whose state goes bad mid-stream: the step fails, naming its slot
            raise SlotError(poisoned, "simulated bad row state")
        out = {}
        for slot, state in list(self._slots.items()):
            req, done, total = state
            pcm = _tone(req, done * FRAME, FRAME)
            state[1] = done + 1
            finished = state[1] >= total
            out[slot] = SlotOutput(pcm=pcm, codes=np.zeros((len(pcm) // FRAME, 16), np.int32), finished=finished)
            if finished:
                del self._slots[slot]
        return out

    def release(self, slot: int) -> None:
        self._same_thread()
        self._slots.pop(slot, None)
        self._open.pop(slot, None)

    def active_slots(self) -> list[int]:
        return sorted([*self._slots, *self._open])


class FakeTTS:
    languages = LANGUAGES

    def __init__(self, step_delay: float = 0.0, prompt_delay: float = 0.0):
        self.step_delay = step_delay
        self.prompt_delay = prompt_delay
        self.prompt_calls = 0
        self.engines: list[FakeBatchEngine] = []

    def create_voice_prompt(self, ref_audio, ref_text=None) -> FakeVoicePrompt:
        self.prompt_calls += 1
        if self.prompt_delay:
            time.sleep(self.prompt_delay)
        if isinstance(ref_audio, (str, Path)):
            data = Path(ref_audio).read_bytes()
        elif isinstance(ref_audio, bytes):
            data = ref_audio
        else:
            wav, sr = ref_audio
            data = np.asarray(wav, np.float32).tobytes() + str(sr).encode()
        if not isinstance(ref_audio, tuple):
            sf.read(io.BytesIO(data))  # raises on undecodable audio, like the real one would
        key = hashlib.sha256(data + (ref_text or "").encode()).hexdigest()[:16]
        return FakeVoicePrompt(key, ref_text is None)

    def synthesize(self, text, voice, language="English", seed=0, greedy=False,
                   max_new_frames=None, **kw):
        req = GenerationRequest(text=text, voice=voice, language=language, seed=seed,
                                greedy=greedy, max_new_frames=max_new_frames)
        _check(req)
        n = _frames_for(req)
        return _tone(req, 0, n * FRAME), SAMPLE_RATE

    def batch_engine(self, num_slots: int) -> FakeBatchEngine:
        eng = FakeBatchEngine(num_slots, self.step_delay, self)
        self.engines.append(eng)
        return eng
