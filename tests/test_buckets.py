"""`buckets`: every padded length of the package (each distinct value is one compile)."""

from __future__ import annotations

from qwen3tts_jax import buckets


def test_prompt_rows_and_ref_frames_are_powers_of_two_then_multiples_of_256():
    assert [buckets.prompt_rows(n) for n in (1, 16, 17, 100, 256, 257, 600)] == [16, 16, 32, 128, 256, 512, 768]
    assert [buckets.text_ids(n) for n in (0, 1, 16, 17, 100, 600)] == [16, 16, 16, 32, 128, 1024]
    assert [buckets.text_ids(n, 64) for n in (1, 33, 64, 100)] == [16, 64, 64, 64]
    assert [buckets.ref_frames(n) for n in (1, 8, 9, 100, 256, 257)] == [8, 8, 16, 128, 256, 512]


def test_codec_frames_waste_at_most_a_third():
    assert [buckets.codec_frames(t) for t in (1, 8, 9, 12, 13, 17, 25, 33, 49, 65, 97, 300)] == \
        [8, 8, 12, 12, 16, 24, 32, 48, 64, 96, 128, 384]
    assert all(t <= buckets.codec_frames(t) <= max(8, 1.5 * t) for t in range(1, 3000))


def test_encoder_frames():
    assert [buckets.encoder_frames(n) for n in (1, 16, 17, 100, 256, 257, 600)] == [16, 16, 32, 128, 256, 512, 768]


def test_mel_frames_pad_under_a_quarter_with_few_sizes():
    sizes = {buckets.mel_frames(n) for n in range(1, 4000)}
    assert all(buckets.mel_frames(n) >= n for n in range(1, 4000))
    assert all(buckets.mel_frames(n) % 64 == 0 and buckets.mel_frames(n) < max(n + 64, 1.25 * n)
               for n in range(1, 4000))
    assert len(sizes) < 30  # a handful of compiled shapes cover clips up to ~40 s


def test_attend_span_is_capped_by_the_cache():
    assert [buckets.attend_span(n, 2048) for n in (1, 128, 129, 300, 1025, 5000)] == [128, 128, 256, 512, 2048, 2048]
    assert buckets.attend_span(10, 24) == 24


def test_cache_len_leaves_room_for_a_prompt():
    assert [buckets.cache_len(n) for n in (0, 1024, 1025, 3000)] == [2048, 2048, 3072, 4096]
    assert all(buckets.cache_len(n) >= n + 1024 for n in range(0, 9000, 37))
