"""Code generation: bucketed prefill of one row, and one device call per frame for all rows.

A frame step, for every row of the batch at once:
  1. the code predictor expands the row's last c0 into codebooks 1..15 (its 15 sequential
     samples in a `fori_loop`, or unrolled on accelerators, over its own 16-slot cache that
     starts empty every frame);
  2. the talker takes one position: the frame's summed 16-codebook embedding plus the row's
     next trailing-text vector (tts_pad once the text is used up), written in place into the
     preallocated `[B, S_max, kv_heads, head_dim]` cache at the row's own slot;
  3. the next c0 is sampled on device with the row's own parameters and PRNG stream.
Rows are independent (own lengths, prompts, parameters, EOS); finished or empty rows still
flow through the fixed shapes but never change.

Text that arrives while a row speaks (`append_text`): the trailing text is a ring of N vectors
per row, the host appends to it between steps, and a row whose next text vector has not
arrived yet (`text_open` and `step == trailing_len`) *waits*: it flows through the step but
nothing of it changes (KV length, hidden state, c0, step, history; its PRNG keys are indexed
by step, so they wait too). Its KV write lands on its own next slot, which its real step
rewrites before anything reads it. A row that waits and then goes on makes exactly the frames
it would have made with all its text in hand. Shapes never depend on the data, so the
frame step compiles once per attention span and prefill once per length bucket.

`DecodeParts` is what a model hands the engine: the static spec and the weights, split from
the modules once (`make_parts`), optionally packed for the CPU kernel (`pack_parts`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from qwen3tts_jax import kernels
from qwen3tts_jax.code_predictor import frame_embedding
from qwen3tts_jax.config import Qwen3TTSConfig
from qwen3tts_jax.kv_cache import KVCache
from qwen3tts_jax.layers import bf16_if_exact, dot_weight, pack_linears
from qwen3tts_jax.sampling import SamplingParams, draw, talker_logits_processors

# The reference never samples the talker's top 1024 ids but EOS (its `suppress_tokens` are
# `range(vocab_size - 1024, vocab_size)` minus `codec_eos_token_id`): the control range.
CONTROL_RANGE = 1024
# The reference blocks EOS until this many c0 tokens exist (`min_new_tokens=2` in generate).
MIN_NEW_TOKENS = 2
# Steps of up to this many rows decode with packed bfloat16 weights on CPU (`RowParts`).
PACKED_MAX_ROWS = 4


@dataclasses.dataclass(frozen=True, eq=False)
class DecodeSpec:
    """Static facts of the decode step, a jit static argument.

    Hashed by identity (eq=False): jit hashes static arguments on every call, and hashing
    the GraphDefs costs about a millisecond. A model builds its spec once and reuses it.
    """

    talker_def: nnx.GraphDef
    predictor_def: nnx.GraphDef
    eos_id: int
    suppress_start: int   # ids >= this, except EOS, are never sampled
    min_new_tokens: int   # EOS is blocked until this many c0 tokens exist
    groups: int           # codebooks per frame (16)
    # The code predictor's 15 steps as straight-line code (static step index: heads and
    # embeddings picked at trace time) rather than a `fori_loop` with a `lax.switch`. On an
    # H100: 7.0 vs 7.5 ms per frame at batch 1, 7.1 vs 7.0 at batch 16 (BENCHMARKS.md, GPU),
    # so accelerators keep the form with no device-side control flow. On CPU the two run
    # equally fast and the loop compiles in half the time. See `unroll_predictor_default`.
    unroll_predictor: bool = False
    # The predictor's heads are bfloat16 and go through `kernels.bf16_matmul` (`pack_parts`).
    packed_heads: bool = False


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Weights:
    talker: nnx.State
    predictor: nnx.State
    heads: tuple[jax.Array, ...]  # G-1 x [Vp, Hc] the predictor's lm_heads (torch layout)
    embeddings: jax.Array    # [G-1, Vp, H] its codec embeddings, stacked
    tts_pad: jax.Array       # [H] P(tts_pad)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class RowState:
    """Everything a row carries between frames (all `[B, ...]`)."""

    cache: KVCache
    length: jax.Array        # int32, next cache slot (= RoPE position) of the row
    past_hidden: jax.Array   # [B, H] the talker's last normed hidden state
    last_c0: jax.Array       # int32, the latest sampled c0, not yet expanded into a frame
    step: jax.Array          # int32, index of the frame `last_c0` starts
    history: jax.Array       # [B, V] bool, c0 ids sampled so far (repetition penalty)
    trailing: jax.Array      # [B, N, H] text vectors fed one per step; vector i at i % N (a ring)
    trailing_len: jax.Array  # int32, text vectors written so far
    text_open: jax.Array     # bool, more text may come: the row waits at step == trailing_len
    talker_params: SamplingParams
    predictor_params: SamplingParams
    penalty: jax.Array       # float32 repetition penalty
    key: jax.Array           # [B] typed PRNG keys, one stream per request
    max_frames: jax.Array    # int32
    active: jax.Array        # bool


@dataclasses.dataclass(frozen=True, eq=False)
class DecodeParts:
    """What the engine decodes with: the static spec and the weights (split once)."""

    spec: DecodeSpec
    weights: Weights

    @property
    def dtype(self):
        """The talker's activation and cache dtype."""
        return self.weights.tts_pad.dtype


@dataclasses.dataclass(frozen=True, eq=False)
class RowParts:
    """The parts an engine decodes with, by how many rows a step computes: `packed` (the CPU
    kernel) up to `packed_rows` rows, `plain` above (or always, without `packed`)."""

    plain: DecodeParts
    packed: DecodeParts | None = None
    packed_rows: int = 0

    def for_rows(self, rows: int) -> DecodeParts:
        return self.packed if self.packed is not None and rows <= self.packed_rows else self.plain


def make_parts(talker, predictor, config: Qwen3TTSConfig) -> DecodeParts:
    """Split the talker and code predictor once into a spec and weights; every id and size
    comes from `config`."""
    t = config.talker
    t_def, t_state = nnx.split(talker)
    p_def, p_state = nnx.split(predictor)
    heads = tuple(h.weight[...] for h in predictor.lm_head)
    embeddings = jnp.stack([e.embedding[...] for e in predictor.codec_embedding])
    tts_pad = talker.embed_text(jnp.asarray([config.tts_pad_token_id]))[0]
    spec = DecodeSpec(t_def, p_def, eos_id=t.codec_eos_token_id, suppress_start=t.vocab_size - CONTROL_RANGE,
                      min_new_tokens=MIN_NEW_TOKENS, groups=t.num_code_groups,
                      unroll_predictor=unroll_predictor_default())
    return DecodeParts(spec, Weights(t_state, p_state, heads, embeddings, tts_pad))


def packing_pays(dtype) -> bool:
    """Whether steps of few rows should decode with `pack_parts`: a float32 model on the CPU
    backend with the kernel on. At batch 1 a frame step then reads half the bytes (~1.6x faster
    on a 2-core CPU); from ~8 rows XLA's float32 matmul wins (BENCHMARKS.md), hence
    `PACKED_MAX_ROWS`."""
    return jnp.dtype(dtype) == jnp.float32 and jax.default_backend() == "cpu" and kernels.available()


def pack_parts(parts: DecodeParts) -> DecodeParts:
    """The same model with every bfloat16-exact matrix stored as bfloat16 and multiplied by the
    CPU kernel, chosen explicitly: `Linear.packed` in the new GraphDefs (`layers.pack_linears`)
    and `DecodeSpec.packed_heads` for the predictor's heads (all or none). Lossless; the float32
    weights stay as they are, so keeping both costs about 1.5x the weight memory."""
    spec, w = parts.spec, parts.weights
    talker = nnx.merge(spec.talker_def, w.talker)
    predictor = nnx.merge(spec.predictor_def, w.predictor)
    pack_linears(talker)
    pack_linears(predictor)
    t_def, t_state = nnx.split(talker)
    p_def, p_state = nnx.split(predictor)
    heads16 = tuple(bf16_if_exact(h) for h in w.heads)
    packed_heads = all(h.dtype == jnp.bfloat16 for h in heads16)
    heads = heads16 if packed_heads else w.heads
    return DecodeParts(
        dataclasses.replace(spec, talker_def=t_def, predictor_def=p_def, packed_heads=packed_heads),
        dataclasses.replace(w, talker=t_state, predictor=p_state, heads=heads))


def empty_state(batch: int, max_len: int, trailing_len: int, talker_cfg, dtype) -> RowState:
    c = talker_cfg
    def zeros_i():  # a fresh buffer per field: donation rejects aliased arguments
        return jnp.zeros((batch,), jnp.int32)
    return RowState(
        cache=KVCache.zeros(c.num_hidden_layers, batch, max_len, c.num_key_value_heads, c.head_dim, dtype),
        length=zeros_i(), past_hidden=jnp.zeros((batch, c.hidden_size), dtype), last_c0=zeros_i(), step=zeros_i(),
        history=jnp.zeros((batch, c.vocab_size), jnp.bool_),
        trailing=jnp.zeros((batch, trailing_len, c.hidden_size), dtype), trailing_len=zeros_i(),
        talker_params=SamplingParams.make(batch), predictor_params=SamplingParams.make(batch),
        penalty=jnp.ones((batch,), jnp.float32), key=jax.random.split(jax.random.key(0), batch),
        max_frames=zeros_i(), active=jnp.zeros((batch,), jnp.bool_), text_open=jnp.zeros((batch,), jnp.bool_))


def _sample_c0(spec: DecodeSpec, logits, history, penalty, produced, params, keys):
    """Next c0 from talker logits; `produced` = c0 tokens generated before this one."""
    logits = talker_logits_processors(logits, history, penalty, produced < spec.min_new_tokens,
                                      spec.eos_id, spec.suppress_start)
    return draw(logits, params, keys)


@functools.partial(jax.jit, static_argnames=("spec",), donate_argnames=("state",))
def prefill(spec: DecodeSpec, weights: Weights, state: RowState, row, embeds, length, trailing,
            trailing_len, talker_params: SamplingParams, predictor_params: SamplingParams, penalty,
            seed, max_frames, text_open) -> RowState:
    """Run row `row`'s prompt `embeds [P, H]` (real rows `< length`), write its cache, sample c0.
    `trailing [N, H]`: its first `trailing_len` text vectors; `text_open`: more will be appended.

    Prompts are right-padded to the bucket P: causal attention keeps padding out of real rows,
    and the padded slots are overwritten by the next decode steps before they become visible.
    """
    talker = nnx.merge(spec.talker_def, weights.talker)
    p = embeds.shape[0]
    hidden, kv = talker(embeds[None].astype(state.past_hidden.dtype), jnp.arange(p, dtype=jnp.int32)[None])
    cache = KVCache(
        tuple(jax.lax.dynamic_update_slice(c, k.astype(c.dtype), (row, 0, 0, 0))
              for c, k in zip(state.cache.keys, kv.keys, strict=True)),
        tuple(jax.lax.dynamic_update_slice(c, v.astype(c.dtype), (row, 0, 0, 0))
              for c, v in zip(state.cache.values, kv.values, strict=True)))
    last = jax.lax.dynamic_index_in_dim(hidden[0], length - 1, keepdims=False)   # [H]
    key = jax.random.key(seed)
    logits = talker.logits(last)[None]
    c0 = _sample_c0(spec, logits, jnp.zeros_like(state.history[:1]), penalty[None], jnp.zeros((1,), jnp.int32),
                    jax.tree.map(lambda x: x[None], talker_params),
                    jax.random.fold_in(jax.random.fold_in(key, 0), 0)[None])[0]

    def put(field, value):
        return field.at[row].set(value)
    v = state.history.shape[-1]
    return RowState(
        cache=cache, length=put(state.length, length), past_hidden=put(state.past_hidden, last),
        last_c0=put(state.last_c0, c0), step=put(state.step, 0),
        history=put(state.history, jnp.arange(v) == c0),
        trailing=put(state.trailing, trailing.astype(state.trailing.dtype)),
        trailing_len=put(state.trailing_len, trailing_len),
        talker_params=jax.tree.map(put, state.talker_params, talker_params),
        predictor_params=jax.tree.map(put, state.predictor_params, predictor_params),
        penalty=put(state.penalty, penalty), key=put(state.key, key),
        max_frames=put(state.max_frames, max_frames), active=put(state.active, True),
        text_open=put(state.text_open, text_open))


@functools.partial(jax.jit, static_argnames=("spec",), donate_argnames=("state",))
def append_text(spec: DecodeSpec, weights: Weights, state: RowState, row, ids, count, close) -> RowState:
    """Append the first `count` of `ids [K]` (K a multiple of `talker.TEXT_BLOCK`) to row `row`'s
    trailing text; `close`: they are its last (the text's EOS among them), so the row stops
    waiting for more. The caller keeps the unread text within the ring (`trailing_len - step
    + count <= N`)."""
    talker = nnx.merge(spec.talker_def, weights.talker)
    vecs = talker.embed_text_blocked(ids).astype(state.trailing.dtype)  # [K, H]
    n = state.trailing.shape[1]
    start = state.trailing_len[row]
    i = jnp.arange(ids.shape[0])
    at = (start + i) % n
    old = state.trailing[row, at]
    trailing = state.trailing.at[row, at].set(jnp.where((i < count)[:, None], vecs, old))
    return dataclasses.replace(state, trailing=trailing, trailing_len=state.trailing_len.at[row].add(count),
                               text_open=state.text_open.at[row].set(~close))


def _expand_frame(spec: DecodeSpec, weights: Weights, state: RowState, keys):
    """Codebooks 1..G-1 of every row's pending frame; returns (codes [B, G], F(frame) [B, H])."""
    talker = nnx.merge(spec.talker_def, weights.talker)
    predictor = nnx.merge(spec.predictor_def, weights.predictor)
    b, g = state.last_c0.shape[0], spec.groups
    pcfg_layers = len(predictor.layers)
    kv_heads = predictor.layers[0].self_attn.num_kv_heads
    head_dim = predictor.layers[0].self_attn.head_dim
    cache = KVCache.zeros(pcfg_layers, b, g, kv_heads, head_dim, state.past_hidden.dtype)
    c0_vec = talker.embed_codec(state.last_c0)
    x = jnp.stack([state.past_hidden, c0_vec], axis=1)          # [B, 2, H]
    zeros = jnp.zeros((b,), jnp.int32)
    h, cache = predictor(x, jnp.broadcast_to(jnp.arange(2, dtype=jnp.int32), (b, 2)), cache, zeros)

    def head_logits(head, h_last):
        if spec.packed_heads:
            return kernels.bf16_matmul(h_last, head)
        return dot_weight(h_last, head).astype(jnp.float32)
    # One branch per head: indexing stacked heads with the traced j would copy 8 MB per step.
    heads = [functools.partial(head_logits, head) for head in weights.heads]

    def sample(j, h_last):  # codebook j+1 from lm_head[j]
        logits = heads[j](h_last) if isinstance(j, int) else jax.lax.switch(j, heads, h_last)
        return draw(logits, state.predictor_params, jax.vmap(lambda k: jax.random.fold_in(k, j + 1))(keys))

    codes = jnp.zeros((b, g), jnp.int32).at[:, 0].set(state.last_c0)
    c = sample(0, h[:, -1])
    codes = codes.at[:, 1].set(c)

    def body(j, carry):  # input E_j(c_j) at position j+1 predicts codebook j+1
        cache, codes, c = carry
        # One gather with an index per row, whether j is traced or a Python int: a static
        # `embeddings[j - 1]` would copy the 8 MB table out of the stack first.
        x = weights.embeddings[jnp.full_like(c, j - 1), c][:, None]
        pos = jnp.full((b,), j + 1, jnp.int32)
        h, cache = predictor(x, pos[:, None], cache, pos)
        c = sample(j, h[:, 0])
        return cache, codes.at[:, j + 1].set(c), c

    if spec.unroll_predictor:
        carry = (cache, codes, c)
        for j in range(1, g - 1):
            carry = body(j, carry)
        codes = carry[1]
    else:
        _, codes, _ = jax.lax.fori_loop(1, g - 1, body, (cache, codes, c))
    return codes, frame_embedding(talker, predictor, codes)


def _frame(spec: DecodeSpec, weights: Weights, state: RowState, attend_len: int | None):
    talker = nnx.merge(spec.talker_def, weights.talker)
    keys = jax.vmap(jax.random.fold_in)(state.key, state.step + 1)
    codes, frame_vec = _expand_frame(spec, weights, state, keys)
    rows = jnp.arange(state.step.shape[0])
    text = state.trailing[rows, state.step % state.trailing.shape[1]]  # [b, H], a gather: see `_leading`
    text = jnp.where((state.step < state.trailing_len)[:, None], text, weights.tts_pad.astype(text.dtype))
    x = (frame_vec + text)[:, None].astype(state.past_hidden.dtype)
    # A waiting row writes its own next slot (rewritten by its real step); free rows write slot 0.
    slot = jnp.where(state.active, state.length, 0)
    hidden, cache = talker(x, slot[:, None], state.cache, slot, attend_len=attend_len)
    hidden = hidden[:, 0]
    c0 = _sample_c0(spec, talker.logits(hidden), state.history, state.penalty, state.step + 1,
                    state.talker_params, jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys))
    ready = state.active & (~state.text_open | (state.step < state.trailing_len))  # else it waits for text
    emitted = ready
    finished = emitted & ((c0 == spec.eos_id) | (state.step + 1 >= state.max_frames))
    act = ready[:, None]
    new = dataclasses.replace(
        state, cache=cache,
        length=jnp.where(ready, state.length + 1, state.length),
        past_hidden=jnp.where(act, hidden, state.past_hidden),
        last_c0=jnp.where(ready, c0, state.last_c0),
        step=jnp.where(ready, state.step + 1, state.step),
        history=state.history | (act & (jnp.arange(state.history.shape[-1]) == c0[:, None])),
        active=state.active & ~finished)
    return new, (codes, emitted, finished)


@functools.partial(jax.jit, static_argnames=("spec", "frames", "attend_len", "rows"), donate_argnames=("state",))
def generate_frames(spec: DecodeSpec, weights: Weights, state: RowState, frames: int = 1,
                    attend_len: int | None = None, rows: int | None = None):
    """`frames` frame steps in one device call, for the first `rows` rows (static; default all).

    `attend_len` (static) bounds the talker's attention to the first cache slots; the caller
    guarantees every active row's last slot in this call is below it (`buckets.attend_span`).
    `rows`: the step computes only rows `0..rows-1` (the engine keeps its active rows there,
    `buckets.active_rows`); the others are left as they are, and their KV cache is neither read
    nor copied. Returns the state and `(codes [rows, frames, G], made [rows], finished [rows])`:
    row b made its first `made[b]` frames of `codes` in this call (rows stop early at EOS or
    their limit), and `finished[b]` says its utterance ended here.
    """
    rows = state.length.shape[0] if rows is None else rows

    def body(s, _):
        sub, out = _frame(spec, weights, _leading(s, rows), attend_len)
        return _put_leading(s, sub, rows), out
    state, (codes, emitted, finished) = jax.lax.scan(body, state, None, length=frames)
    made = emitted.sum(axis=0).astype(jnp.int32)
    return state, (jnp.swapaxes(codes, 0, 1), made, finished.any(axis=0))


def _leading(state: RowState, rows: int) -> RowState:
    """The first `rows` rows of every small per-row field. The two big buffers stay whole: the
    KV cache (the talker writes and reads just its first rows in place, `kv_cache.write_rows`)
    and the trailing text (gathered by row): slicing them in and back out would copy them."""
    if rows == state.length.shape[0]:
        return state
    sub = jax.tree.map(lambda x: x[:rows], dataclasses.replace(state, cache=None, trailing=None))
    return dataclasses.replace(sub, cache=state.cache, trailing=state.trailing)


def _put_leading(state: RowState, sub: RowState, rows: int) -> RowState:
    if rows == state.length.shape[0]:
        return sub
    merged = jax.tree.map(lambda full, part: full.at[:rows].set(part),
                          dataclasses.replace(state, cache=None, trailing=None),
                          dataclasses.replace(sub, cache=None, trailing=None))
    return dataclasses.replace(merged, cache=sub.cache, trailing=state.trailing)


@functools.partial(jax.jit, static_argnames=("span",), donate_argnames=("state",))
def move_row(state: RowState, src, dst, span: int) -> RowState:
    """Row `src`'s whole state into row `dst` (the engine packs its active rows): every per-row
    field, and the first `span` (static, `buckets.attend_span`) slots of its KV cache, all the
    row has written. `src` is left inactive."""
    def move(x):
        return x.at[dst].set(x[src])

    def move_span(c):
        block = jax.lax.dynamic_slice(c, (src, 0, 0, 0), (1, span, *c.shape[2:]))
        return jax.lax.dynamic_update_slice(c, block, (dst, 0, 0, 0))
    fields = jax.tree.map(move, dataclasses.replace(state, cache=None))
    cache = KVCache(tuple(move_span(c) for c in state.cache.keys), tuple(move_span(c) for c in state.cache.values))
    moved = dataclasses.replace(fields, cache=cache)
    return dataclasses.replace(moved, active=moved.active.at[src].set(False))


def unroll_predictor_default() -> bool:
    """Straight-line code predictor steps everywhere but the CPU backend (see DecodeSpec)."""
    return jax.default_backend() != "cpu"


@functools.partial(jax.jit, donate_argnames=("state",))
def release(state: RowState, row) -> RowState:
    """Deactivate `row` now (cancel); its slot can be prefilled again."""
    return dataclasses.replace(state, active=state.active.at[row].set(False))
