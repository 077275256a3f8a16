"""Streaming codec decode: equal to one pass for any split, independent rows, constant work."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from qwen3tts_jax import codec_decoder as cd
from qwen3tts_jax import streaming_decoder as sd
from tests.helpers import rel_err
from tests.test_codec_decoder import TOL, pair, random_codes, reference_forward


def stream(dec: sd.StreamingDecoder, codes: np.ndarray, chunk: int) -> np.ndarray:
    """Feed `codes [B, T, 16]` `chunk` frames per call (last call right-padded); concatenate."""
    b, t, _ = codes.shape
    spf = dec.samples_per_frame
    out = []
    for s in range(0, t, chunk):
        part = codes[:, s:s + chunk]
        n = part.shape[1]
        part = np.concatenate([part, np.zeros((b, chunk - n, 16), part.dtype)], axis=1)
        pcm = dec.feed(part, n_valid=np.full((b,), n))
        assert pcm.shape == (b, chunk * spf)
        out.append(np.asarray(pcm)[:, :n * spf])
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 7])
def test_streaming_equals_one_pass(chunk):
    _, model, hf = pair("tiny", 0)
    codes = random_codes(chunk, 2, 95, hf["codebook_size"])  # past the 72-frame window
    full = np.asarray(cd.decode(model, codes))
    got = stream(sd.StreamingDecoder(model, batch_size=2), codes, chunk)
    assert rel_err(got, full) < TOL


@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_matches_the_reference_with_real_rates(seed):
    ref, model, hf = pair("tiny-real-rates", seed)
    codes = random_codes(seed, 1, 9, hf["codebook_size"])
    dec = sd.StreamingDecoder(model)
    assert dec.latency_samples == 1920  # first PCM after the first frame
    got = stream(dec, codes, 2)
    assert rel_err(got, reference_forward(ref, codes)) < TOL


def test_rows_are_independent_slots_with_their_own_progress_and_reset():
    _, model, hf = pair("tiny", 1)
    size, chunk = hf["codebook_size"], 3
    utterances = [random_codes(10 + i, 1, n, size)[0] for i, n in enumerate((20, 11, 17, 9))]
    dec = sd.StreamingDecoder(model, batch_size=3)
    # Row 0 plays utterance 0; row 1 plays utterance 1, is flushed, then plays utterance 3;
    # row 2 starts late with utterance 2. Each call feeds a different number of frames per row.
    queues = [[utterances[0]], [utterances[1], utterances[3]], [utterances[2]]]
    start_at = [0, 0, 4]
    got: dict[int, list] = {0: [], 1: [], 2: [], 3: []}
    playing = [0, 1, 2]
    cursor = [0, 0, 0]
    spf = dec.samples_per_frame
    for call in range(40):
        codes = np.zeros((3, chunk, 16), np.int64)
        n_valid = np.zeros(3, np.int64)
        for r in range(3):
            if call < start_at[r] or not queues[r]:
                continue
            utt = queues[r][0]
            n = min((call + r) % chunk + 1, len(utt) - cursor[r])  # 1..3 frames, varying
            codes[r, :n] = utt[cursor[r]:cursor[r] + n]
            n_valid[r] = n
        pcm = np.asarray(dec.feed(codes, n_valid=n_valid))
        for r in range(3):
            if n_valid[r]:
                got[playing[r]].append(pcm[r, :n_valid[r] * spf])
                cursor[r] += n_valid[r]
                if cursor[r] == len(queues[r][0]):
                    tail = dec.flush(rows=[r])
                    assert tail.shape == (3, 0)
                    queues[r].pop(0)
                    cursor[r] = 0
                    if queues[r]:
                        playing[r] = 3
    assert not any(queues)
    for i, utt in enumerate(utterances):
        full = np.asarray(cd.decode(model, utt[None]))[0]
        assert rel_err(np.concatenate(got[i]), full) < TOL, i


def test_per_call_work_is_constant_and_compiled_once():
    _, model, hf = pair("tiny", 0)
    dec = sd.StreamingDecoder(model, batch_size=2)
    codes = random_codes(5, 2, 150, hf["codebook_size"])
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), dec.state)
    dec.feed(codes[:, :4])  # warm-up: compiles the 4-frame step once
    compiled = sd._step._cache_size()
    for s in range(4, 148, 4):  # 2.5x the attention window
        dec.feed(codes[:, s:s + 4], n_valid=np.array([4, s % 5]))
    assert sd._step._cache_size() == compiled  # same executable for every call
    assert jax.tree.map(lambda x: (x.shape, x.dtype), dec.state) == shapes  # state does not grow
    dec.reset()
    assert int(np.asarray(dec.state.pos).max()) == 0
    assert sd._step._cache_size() == compiled


def test_streaming_bad_input():
    _, model, hf = pair("tiny", 0)
    dec = sd.StreamingDecoder(model, batch_size=2)
    good = random_codes(0, 2, 2, hf["codebook_size"])
    for bad in (-1, hf["codebook_size"]):
        codes = good.copy()
        codes[1, 0, 5] = bad
        with pytest.raises(ValueError, match="out of range"):
            dec.feed(codes)
    with pytest.raises(ValueError, match="rows"):
        dec.feed(np.concatenate([good, good[:1]]))  # more rows than streams
    with pytest.raises(ValueError, match="shape"):
        dec.feed(good[..., :4])
    with pytest.raises(ValueError, match="n_valid"):
        dec.feed(good, n_valid=np.array([3, 0]))
    with pytest.raises(ValueError, match="n_valid"):
        dec.feed(good, n_valid=np.array([1]))


def test_feeding_the_first_rows_leaves_the_others_alone():
    """An engine steps only its active (first) rows: `step` with b < B rows decodes those and
    leaves the rest untouched, bit for bit what a b-row decoder makes."""
    _, model, hf = pair("tiny", 0)
    codes = random_codes(3, 3, 4, hf["codebook_size"])
    wide = sd.StreamingDecoder(model, batch_size=3)
    wide.feed(codes[:, :2])
    before = jax.tree.map(np.asarray, wide.state)
    # A 1-row decoder from the same state (not fed on its own: a 3-row step may round
    # differently from a 1-row one, so only equal row counts are compared bit for bit).
    narrow = sd.StreamingDecoder(model, batch_size=1)
    narrow.state = jax.tree.map(lambda x: jax.numpy.asarray(x[:1]), before)
    np.testing.assert_array_equal(np.asarray(wide.feed(codes[:1, 2:])), np.asarray(narrow.feed(codes[:1, 2:])))
    after = jax.tree.map(np.asarray, wide.state)
    for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a[1:], b[1:])
    moved = wide.move_row(wide.state, 0, 2)
    for leaf in jax.tree.leaves(moved):
        np.testing.assert_array_equal(np.asarray(leaf)[2], np.asarray(leaf)[0])


def test_primed_row_continues_the_reference_codes():
    """ICL: a row primed with reference codes streams the continuation of cat(ref, generated)."""
    _, model, hf = pair("tiny", 2)
    ref_codes = random_codes(20, 1, 30, hf["codebook_size"])[0]
    generated = random_codes(21, 1, 14, hf["codebook_size"])
    dec = sd.StreamingDecoder(model, batch_size=2)
    dec.state = dec.set_row(dec.state, 1, dec.prime(ref_codes))
    codes = np.concatenate([random_codes(22, 1, 14, hf["codebook_size"]), generated])
    got = stream(dec, codes, 2)
    full = np.asarray(cd.decode(model, np.concatenate([ref_codes[None], generated], axis=1)))[0]
    assert rel_err(got[1], full[30 * dec.samples_per_frame:]) < TOL
    assert rel_err(got[0], np.asarray(cd.decode(model, codes[:1]))[0]) < TOL
    with pytest.raises(ValueError, match="row"):
        dec.set_row(dec.state, 2, dec.prime(ref_codes))
