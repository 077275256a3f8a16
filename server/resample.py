"""Streaming output resampling.

One `StreamResampler` per request: soxr's `ResampleStream` keeps the filter state between
chunks, so the chunked output is the same signal as resampling the whole utterance at once
(no clicks or gaps at chunk boundaries). `flush()` returns the filter's tail at the end.
At the engine rate the samples pass through untouched (byte-exact pcm32f).
"""

from __future__ import annotations

import numpy as np
import soxr


class StreamResampler:
    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ"):
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = None
        if in_rate != out_rate:
            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)

    def process(self, samples: np.ndarray) -> np.ndarray:
        samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        if self._stream is None or samples.size == 0:
            return samples
        return self._stream.resample_chunk(samples, last=False)

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
        self._stream = None
        return tail
