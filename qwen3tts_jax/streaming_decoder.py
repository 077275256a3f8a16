"""Stateful streaming codec decode: frames in as they are produced, final PCM out, O(new frames).

The decoder (`codec_decoder.CodecDecoder`) is causal end to end with zero lookahead: every
conv pads on the left only, every transposed conv is trimmed on the right, the transformer
is causal. So when frame t arrives, samples `[t*1920, (t+1)*1920)` are final at once.

Algorithmic latency: one frame. The first 1920 samples (80 ms at 24 kHz) come out of the
call that feeds the first frame; no later frame changes them, and `flush()` has nothing left
to emit (it returns zero samples and resets the rows).

State per row (`DecoderState`), in the order the layers use it:
- `pos`: frames decoded so far (RoPE positions continue from it, as in one pass);
- `context`: for each causal conv its last `(k-1)*dilation` inputs, for each causal transposed
  conv its last `k/stride - 1` inputs (the overlap tail, kept as inputs rather than partial
  outputs), and for each transformer layer the last `window - 1 = 71` post-RoPE keys and
  values (a fixed sliding-window KV cache, masked by position until it fills).
Its size is fixed, so each call costs O(new frames) however long the utterance is.

Equality: the concatenated output equals one-pass `codec_decoder.decode` of the same codes
(float32 tolerance), for any split into calls. It is *not* the reference's offline
`decode` for more than 300 frames: that one re-runs 300-frame chunks with only 25 frames
of context, positions restarting at 0 (`codec_decoder.decode_chunked` reproduces it).

Shapes: one call decodes `[B, N]` frames; each N compiles once (use one or a few chunk
sizes). Rows are independent slots: `n_valid[b]` (0..N) says how many of row b's N frames
are real this call (the rest is right padding that never enters the state), and
`reset(rows)` starts new utterances in some slots without touching the others.
"""

from __future__ import annotations

import copy
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwen3tts_jax import buckets
from qwen3tts_jax.codec_decoder import CodecDecoder, Context, check_codes

LOOKAHEAD_FRAMES = 0  # frames the decoder must see beyond frame t before t's samples are final


class DecoderState(NamedTuple):
    pos: jax.Array  # [B] int32, frames decoded per row
    context: tuple[jax.Array, ...]  # [B, n_i, ...] carried left context, layer call order


def _run(module: CodecDecoder, state: DecoderState | None, codes: jax.Array, n_valid: jax.Array):
    b, n, _ = codes.shape
    pos = jnp.zeros((b,), jnp.int32) if state is None else state.pos
    ctx = Context(n, pos, None if state is None else state.context, n_valid=n_valid, track=True)
    pcm = module(codes, ctx)
    return pcm, DecoderState(pos + n_valid, tuple(ctx.new_state))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _step(graphdef, params, state: DecoderState, codes: jax.Array, n_valid: jax.Array):
    return _run(nnx.merge(graphdef, params), state, codes, n_valid)


@functools.partial(jax.jit, static_argnums=1)
def _take_leading(state: DecoderState, rows: int) -> DecoderState:
    return jax.tree.map(lambda x: x[:rows], state)


@functools.partial(jax.jit, donate_argnums=0)
def _put_leading(state: DecoderState, sub: DecoderState) -> DecoderState:
    return jax.tree.map(lambda full, part: jax.lax.dynamic_update_slice_in_dim(full, part, 0, axis=0), state, sub)


@functools.partial(jax.jit, donate_argnums=0)
def _move_row(state: DecoderState, src: jax.Array, dst: jax.Array) -> DecoderState:
    return jax.tree.map(lambda x: x.at[dst].set(x[src]), state)


@functools.partial(jax.jit, donate_argnums=0)
def _reset(state: DecoderState, rows: jax.Array) -> DecoderState:
    def clear(x):
        return jnp.where(rows.reshape((-1,) + (1,) * (x.ndim - 1)), jnp.zeros_like(x), x)
    return jax.tree.map(clear, state)


@functools.partial(jax.jit, donate_argnums=0)
def _set_row(state: DecoderState, row: jax.Array, row_state: DecoderState) -> DecoderState:
    return jax.tree.map(lambda s, r: s.at[row].set(r[0]), state, row_state)


def init_state(module: CodecDecoder, batch_size: int) -> DecoderState:
    """Zero state (utterance start) for `batch_size` rows."""
    graphdef, params = nnx.split(module)

    def shapes(p):
        codes = jnp.zeros((batch_size, 1, module.cfg.num_quantizers), jnp.int32)
        return _run(nnx.merge(graphdef, p), None, codes, jnp.ones((batch_size,), jnp.int32))[1]

    abstract = jax.eval_shape(shapes, params)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)


class StreamingDecoder:
    """B independent decode streams over one `CodecDecoder`.

    Functional core: `step(state, codes, n_valid) -> (pcm, state)` (jitted; the state is
    donated). Stateful convenience: `feed`, `reset`, `flush` keep `self.state`.
    `pcm [B, N * 1920]`: row b's new final samples are `pcm[b, :n_valid[b] * 1920]`.
    """

    def __init__(self, module: CodecDecoder, batch_size: int = 1):
        self.cfg = module.cfg
        self.batch_size = batch_size
        self.samples_per_frame = module.cfg.samples_per_frame
        self.graphdef, self.params = nnx.split(module)
        self.state = init_state(module, batch_size)

    @property
    def latency_samples(self) -> int:
        """Samples of audio a frame holds back: frame t's PCM is final when frame t is fed."""
        return (LOOKAHEAD_FRAMES + 1) * self.samples_per_frame

    def init_state(self) -> DecoderState:
        return jax.tree.map(jnp.zeros_like, self.state)

    def with_batch_size(self, batch_size: int) -> StreamingDecoder:
        """Another decoder over the same weights with `batch_size` rows (fresh state)."""
        other = copy.copy(self)
        other.batch_size = batch_size
        other.state = jax.tree.map(lambda x: jnp.zeros((batch_size,) + x.shape[1:], x.dtype), self.state)
        return other

    def prime(self, codes) -> DecoderState:
        """One row's state (batch 1) after decoding `codes [T, 16]`, the PCM discarded.

        For voice cloning with reference codes (ICL) the reference decodes
        `cat(ref_codes, generated)`: prime with `ref_codes`, `set_row` it into a slot, then
        stream the generated frames. Padded to a length bucket, so few compiles.
        """
        a = check_codes(np.asarray(codes)[None], self.cfg, allow_padding=False)
        single = self.with_batch_size(1)
        t = a.shape[1]
        if t == 0:
            return single.state
        padded = np.zeros((1, buckets.codec_frames(t), a.shape[2]), np.int32)
        padded[0, :t] = a[0]
        _, state = single.step(single.state, padded, np.asarray([t], np.int32))
        return state

    def set_row(self, state: DecoderState, row: int, row_state: DecoderState) -> DecoderState:
        """`state` with row `row` replaced by the batch-1 `row_state` (donates `state`)."""
        if not 0 <= row < self.batch_size:
            raise ValueError(f"row {row} out of range for {self.batch_size} rows")
        return _set_row(state, jnp.asarray(row, jnp.int32), row_state)

    def move_row(self, state: DecoderState, src: int, dst: int) -> DecoderState:
        """`state` with row `src`'s stream copied into row `dst` (donates `state`)."""
        return _move_row(state, jnp.asarray(src, jnp.int32), jnp.asarray(dst, jnp.int32))

    def _n_valid(self, n_valid, n: int, rows: int) -> jax.Array:
        if n_valid is None:
            return jnp.full((rows,), n, jnp.int32)
        nv = np.asarray(n_valid) if not isinstance(n_valid, jax.Array) else n_valid
        if nv.shape != (rows,):
            raise ValueError(f"n_valid must have shape ({rows},), got {tuple(nv.shape)}")
        if isinstance(nv, np.ndarray) and (nv.min() < 0 or nv.max() > n):
            raise ValueError(f"n_valid must be in [0, {n}], got {nv.tolist()}")
        return jnp.asarray(nv, jnp.int32)

    def _codes(self, codes) -> jax.Array:
        q = self.cfg.num_quantizers
        if isinstance(codes, jax.Array):
            # Device arrays are not pulled to the host to check ids: an id out of range
            # gathers NaN, which shows in the output.
            if codes.ndim != 3 or not 0 < codes.shape[0] <= self.batch_size or codes.shape[2] != q:
                raise ValueError(f"codes must have shape [rows <= {self.batch_size}, frames, {q}], "
                                 f"got {tuple(codes.shape)}")
            if not jnp.issubdtype(codes.dtype, jnp.integer):
                raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
            return codes.astype(jnp.int32)
        a = check_codes(codes, self.cfg, allow_padding=False)
        if not 0 < a.shape[0] <= self.batch_size:
            raise ValueError(f"codes have {a.shape[0]} rows, the decoder has {self.batch_size}")
        return jnp.asarray(a)

    def step(self, state: DecoderState, codes, n_valid=None) -> tuple[jax.Array, DecoderState]:
        """Decode `codes [b, N, 16]` into the first b rows (b <= B: the other rows are neither
        computed nor changed); `n_valid [b]` real frames per row (default all N).

        `state` is donated: use the returned one.
        """
        codes = self._codes(codes)
        b = codes.shape[0]
        if codes.shape[1] == 0:
            return jnp.zeros((b, 0), jnp.float32), state
        n_valid = self._n_valid(n_valid, codes.shape[1], b)
        if b < self.batch_size:
            # Three calls, not one: in a single program XLA copies every whole state leaf (83 MB
            # at 16 rows) before writing the first rows back in place; split, nothing big moves.
            pcm, sub = _step(self.graphdef, self.params, _take_leading(state, b), codes, n_valid)
            return pcm, _put_leading(state, sub)
        return _step(self.graphdef, self.params, state, codes, n_valid)

    def feed(self, codes, n_valid=None) -> jax.Array:
        """`step` on `self.state`; returns `pcm [B, N * 1920]` (row b valid up to n_valid[b])."""
        pcm, self.state = self.step(self.state, codes, n_valid)
        return pcm

    def reset(self, rows=None) -> None:
        """Start new utterances in `rows` (indices or a [B] bool mask; default all rows)."""
        self.state = self.reset_state(self.state, rows)

    def reset_state(self, state: DecoderState, rows=None) -> DecoderState:
        if rows is None:
            mask = np.ones((self.batch_size,), bool)
        else:
            rows = np.asarray(rows)
            mask = rows if rows.dtype == bool else np.isin(np.arange(self.batch_size), rows)
            if mask.shape != (self.batch_size,):
                raise ValueError(f"rows mask must have shape ({self.batch_size},)")
        return _reset(state, jnp.asarray(mask))

    def flush(self, rows=None) -> jax.Array:
        """End the utterances in `rows`: returns their remaining samples (none: the decoder has
        no lookahead, so `[B, 0]`) and resets those rows for the next utterance."""
        self.reset(rows)
        return jnp.zeros((self.batch_size, LOOKAHEAD_FRAMES * self.samples_per_frame), jnp.float32)
