"""Every padded length of the package, so every compiled shape: one function per policy.

Each distinct value a function here returns is one more XLA compile of the code that uses
it, so the policies trade padding waste against compile count. Callers pad to these sizes;
nothing else in the package picks a padded length.
"""

from __future__ import annotations


def _powers_then_256(n: int, minimum: int) -> int:
    """Powers of two from `minimum` up to 256, then multiples of 256."""
    if n <= 256:
        size = minimum
        while size < n:
            size *= 2
        return size
    return -(-n // 256) * 256


def prompt_rows(n: int) -> int:
    """Rows of a prefill prompt: 16, 32, ..., 256, then multiples of 256."""
    return _powers_then_256(n, 16)


def text_ids(n: int, capacity: int | None = None) -> int:
    """Trailing-text ids projected in one call (at admission, or appended while a row speaks):
    16, 32, 64, ..., capped at a row's text ring `capacity` (a multiple of 16, so whole
    blocks of `talker.TEXT_BLOCK`)."""
    size = 16
    while size < n:
        size *= 2
    return size if capacity is None else min(size, capacity)


def ref_frames(n: int) -> int:
    """Reference frames (a voice's ICL codes) embedded into a prompt: 8, 16, ..., 256, then
    multiples of 256."""
    return _powers_then_256(n, 8)


def codec_frames(t: int, minimum: int = 8) -> int:
    """Frames of an offline or priming codec decode: 8, 12, 16, 24, 32, 48, 64, ... (at most
    a third wasted)."""
    if t <= minimum:
        return minimum
    p = 1 << (t - 1).bit_length()  # next power of two >= t
    return p * 3 // 4 if t <= p * 3 // 4 else p


def encoder_frames(frames: int) -> int:
    """12 Hz frames of audio through the Mimi codec encoder: 16, 32, ..., 256, then multiples
    of 256."""
    return _powers_then_256(frames, 16)


def mel_frames(num_frames: int) -> int:
    """Mel frames into the speaker encoder: multiples of 64 up to 512, then about 4 sizes per
    octave (padding under 25%)."""
    step = max(64, 1 << max(num_frames.bit_length() - 3, 0))
    return -(-num_frames // step) * step


def attend_span(needed: int, max_len: int, minimum: int = 128) -> int:
    """The talker's attention span for a frame step whose rows need `needed` cache slots:
    powers of two from `minimum`, capped at the cache length, so a long-lived engine compiles
    a few steps and a short utterance never reads the whole preallocated cache."""
    span = minimum
    while span < needed:
        span *= 2
    return min(span, max_len)


def cache_len(max_new_frames: int) -> int:
    """KV cache length of an engine the API builds for requests of `max_new_frames`: 2048, or
    more in steps of 1024 (room for a prompt of up to 1024 rows)."""
    return max(2048, -(-(max_new_frames + 1024) // 1024) * 1024)


def active_rows(n: int, num_slots: int) -> int:
    """Rows one frame step computes when `n` rows are active: powers of two, capped at the
    engine's slots. The engine keeps its active rows first, so a 64-slot engine with 2 busy
    pays for a 2-row step; each size is one compile of the step per attention span."""
    rows = 1
    while rows < n:
        rows *= 2
    return min(rows, num_slots)
