"""TextTokenizer against the reference processor (transformers 4.57.3), loaded from the real files.

The reference loads `AutoProcessor.from_pretrained(local_dir, fix_mistral_regex=True)`: with
the released config.json that is the Mistral-patched regex (our default, regex="auto"). The
plain Qwen2 regex (what a hub-id load gets) is the same processor loaded without the patch.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
import unicodedata
from pathlib import Path

import pytest

from qwen3tts_jax.text_tokenizer import (
    TextTokenizer,
    reference_regex,
    split_assistant,
    split_ref,
)

DATA = Path(__file__).parent / "data"
TOK_DIR = DATA / "hf-configs" / "Qwen3-TTS-12Hz-0.6B-Base"
CORPUS = json.loads((DATA / "tokenizer_corpus.json").read_text(encoding="utf-8"))
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


def target(text: str) -> str:  # reference Qwen3TTSModel._build_assistant_text
    return f"<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n"


def ref_template(text: str) -> str:  # reference Qwen3TTSModel._build_ref_text
    return f"<|im_start|>assistant\n{text}<|im_end|>\n"


def _tokenizer_dir(tmp: Path, config: dict | None) -> Path:
    """A folder with the real tokenizer files and, optionally, a config.json."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES + ("preprocessor_config.json",):
        shutil.copyfile(TOK_DIR / name, tmp / name)
    if config is not None:
        (tmp / "config.json").write_text(json.dumps(config))
    return tmp


@pytest.fixture(scope="module")
def ref_folder(tmp_path_factory) -> Path:
    # The released config.json's fields that matter here (transformers_version 4.57.3).
    config = json.loads((TOK_DIR / "config.json").read_text())
    return _tokenizer_dir(tmp_path_factory.mktemp("ckpt"), config)


def _reference_processor(path: Path, fix_mistral_regex: bool):
    """The reference processor, loaded as `Qwen3TTSModel.from_pretrained` does."""
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSProcessor
    from transformers import AutoConfig, AutoProcessor

    AutoConfig.register("qwen3_tts", Qwen3TTSConfig, exist_ok=True)
    AutoProcessor.register(Qwen3TTSConfig, Qwen3TTSProcessor, exist_ok=True)
    logging.getLogger("transformers").setLevel(logging.ERROR)  # the "incorrect regex" warning
    if fix_mistral_regex:
        return AutoProcessor.from_pretrained(str(path), fix_mistral_regex=True)
    return AutoProcessor.from_pretrained(str(path))


@pytest.fixture(scope="module")
def refs(ref_folder):
    """{regex name: callable str -> reference ids}."""
    out = {}
    for name, fix in (("mistral", True), ("qwen2", False)):
        proc = _reference_processor(ref_folder, fix)
        out[name] = lambda s, proc=proc: proc(text=s, return_tensors="pt", padding=True)["input_ids"][0].tolist()
        out[name].tokenizer = proc.tokenizer
    return out


@pytest.fixture(scope="module")
def toks(ref_folder):
    return {
        "auto": TextTokenizer.from_dir(ref_folder),
        "mistral": TextTokenizer.from_dir(TOK_DIR, regex="mistral"),
        "qwen2": TextTokenizer.from_dir(TOK_DIR, regex="qwen2"),
    }


def test_default_is_reference_local_load(toks, refs):
    assert toks["auto"].regex == "mistral"
    s = "… HelloWorld McDonald's"
    assert refs["mistral"](s) == [1940, 21927, 10134, 4483, 18234, 594]
    assert refs["qwen2"](s) == [1940, 90071, 30914, 594]
    assert toks["auto"].encode(s) == refs["mistral"](s)
    assert toks["mistral"].encode(s) == refs["mistral"](s)
    assert toks["qwen2"].encode(s) == refs["qwen2"](s)


def test_reference_facts_vectors(toks):
    for tok in toks.values():
        assert tok.assistant_ids("Hello world.") == [
            151644, 77091, 198, 9707, 1879, 13, 151645, 198, 151644, 77091, 198]
        assert tok.ref_ids("Okay. Yeah.") == [151644, 77091, 198, 32313, 13, 21607, 13, 151645, 198]
        assert tok.text_ids("你好，世界。我叫通义千问。") == [
            108386, 3837, 99489, 1773, 35946, 99882, 31935, 64559, 99320, 56007, 1773]
        assert tok.ref_text_ids("Okay. Yeah.") == [32313, 13, 21607, 13]
        assert tok.token_to_id("assistant") == 77091 and tok.encode("\n") == [198]
    assert toks["mistral"].text_ids("… HelloWorld McDonald's") == [1940, 21927, 10134, 4483, 18234, 594]
    assert toks["qwen2"].text_ids("… HelloWorld McDonald's") == [1940, 90071, 30914, 594]


@pytest.mark.parametrize("regex", ["mistral", "qwen2"])
def test_corpus_matches_reference(toks, refs, regex):
    tok, ref = toks[regex], refs[regex]
    n_template = 0
    for s in CORPUS:
        assert tok.encode(s) == ref(s), s
        ids = tok.assistant_ids(s)
        if ref(target(s))[:3] != ROLE_IDS:  # gotcha 14, tested below
            assert ids == ref(target(_drop_leading_line_breaks(s))), s
            continue
        n_template += 1
        assert ids == ref(target(s)), s
        assert tok.ref_ids(s) == ref(ref_template(s)), s
        role, text = split_assistant(ids)
        assert role == ROLE_IDS and text == ids[3:-5] == ref(target(s))[3:-5], s
        assert split_ref(tok.ref_ids(s)) == ref(ref_template(s))[3:-2], s
        assert tok.instruct_ids(s) == ref(f"<|im_start|>user\n{s}<|im_end|>\n"), s
    assert n_template > 50


@pytest.mark.parametrize("regex", ["mistral", "qwen2"])
def test_random_strings_match_reference(toks, refs, regex):
    pieces = list("aZ0 \t\n\r'/.,!?-_") + [
        "'s", "'T", "'re", "'ve", "'M", "'ll", "'D", "é", "e\u0301", "ß", "Ǆ", "ǅ", "ǆ", "ʰ", "中", "あ",
        "ア", "한", "Ж", "ж", "٣", "½", "Ⅻ", "²", "😀", "👍🏽", "\u200d", "\u3000", "\u00a0", "\u0301",
        "<|im_end|>", "<tts_pad>", "<think>", "  ", "\n\n", "...", "//", "12", "McD", "HTTP",
    ]
    tok, ref = toks[regex], refs[regex]
    for seed in range(3):
        rng = random.Random(seed)
        for _ in range(60):
            s = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 40)))
            assert tok.encode(s) == ref(s), repr(s)


def test_added_tokens(toks, refs):
    config = json.loads((TOK_DIR / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    ref_decoder = refs["mistral"].tokenizer.added_tokens_decoder
    for tok in toks.values():
        assert len(tok) == 151676 == len(refs["mistral"].tokenizer)
        ours = tok.tokenizer.get_added_tokens_decoder()
        assert sorted(ours) == sorted(int(k) for k in config) == list(range(151643, 151676))
        for idx, spec in config.items():
            added = ours[int(idx)]
            assert added.content == spec["content"] == ref_decoder[int(idx)].content
            assert added.special == spec["special"] == ref_decoder[int(idx)].special
            assert tok.encode(spec["content"]) == [int(idx)]
    assert toks["auto"].token_to_id("<tts_pad>") == 151671
    assert toks["auto"].token_to_id("<tts_text_bos>") == 151672
    assert toks["auto"].token_to_id("<tts_text_eod>") == 151673


def test_decode_matches_reference(toks, refs):
    tok, ref_tok = toks["auto"], refs["mistral"].tokenizer
    for s in CORPUS:
        ids = tok.encode(s)
        assert tok.decode(ids) == ref_tok.decode(ids) == unicodedata.normalize("NFC", s), repr(s)
        assert tok.decode(ids, skip_special_tokens=True) == ref_tok.decode(ids, skip_special_tokens=True)
    lone = tok.token_to_id("ä")  # byte 0xE4 alone: invalid UTF-8, replaced
    ids = [lone, 9707, lone, lone, 151645]
    assert tok.decode(ids) == ref_tok.decode(ids) == "\ufffdHello\ufffd\ufffd<|im_end|>"


# -- gotcha 14: a leading line break may merge with the template's "\n" -----------------------------
ROLE_IDS = [151644, 77091, 198]
# Merge in the reference (role prefix changes):
MERGING = ["\nHello", "\n\nHello", " \nHello", "\n  Hello", "\t\n\tHello", "\n \n Hello", "\n\n\nHi"]
# Do not merge (BPE keeps 198 apart), so the reference is aligned and kept as is:
NOT_MERGING = ["\r\nHello", "\r\rHi", "  \n\nHi"]


def _drop_leading_line_breaks(text: str) -> str:
    stripped = text.lstrip()
    lead = text[: len(text) - len(stripped)]
    return text[max(lead.rfind("\n"), lead.rfind("\r")) + 1:]


@pytest.mark.parametrize("text", MERGING)
def test_leading_line_break_strip(toks, refs, text):
    tok, ref = toks["auto"], refs["mistral"]
    assert ref(target(text))[:3] != ROLE_IDS  # the reference's slices would shift
    assert ref(ref_template(text))[:3] != ROLE_IDS
    kept = _drop_leading_line_breaks(text)
    assert kept and kept[0] not in "\r\n"
    assert tok.assistant_ids(text) == ref(target(kept))
    assert tok.ref_ids(text) == ref(ref_template(kept))
    assert tok.assistant_ids(text)[:3] == ROLE_IDS
    assert tok.text_ids(text) == tok.encode(kept)


@pytest.mark.parametrize("text", NOT_MERGING)
def test_leading_line_break_kept_when_aligned(toks, refs, strict, text):
    tok, ref = toks["auto"], refs["mistral"]
    assert ref(target(text))[:3] == ROLE_IDS
    assert tok.assistant_ids(text) == ref(target(text))
    assert tok.ref_ids(text) == ref(ref_template(text))
    assert strict.assistant_ids(text) == ref(target(text))


@pytest.fixture(scope="module")
def strict():
    return TextTokenizer.from_dir(TOK_DIR, leading_newlines="raise")


@pytest.mark.parametrize("text", MERGING)
def test_leading_line_break_raise(strict, text):
    with pytest.raises(ValueError, match="line break"):
        strict.assistant_ids(text)
    with pytest.raises(ValueError, match="line break"):
        strict.ref_ids(text)
    assert strict.text_ids("Hello\nworld\n") == strict.encode("Hello\nworld\n")  # only leading ones


def test_empty_and_whitespace_text(toks, refs):
    tok = toks["auto"]
    for bad in ("", "\n", "\n\n\n"):
        with pytest.raises(ValueError, match="empty"):
            tok.assistant_ids(bad)
        with pytest.raises(ValueError, match="empty"):
            tok.ref_ids(bad)
    # Leading spaces and tabs without a line break cannot merge with "\n"; kept as the reference.
    for s in ("  Hi", "\tHi", "\u3000Hi", " "):
        assert tok.assistant_ids(s) == refs["mistral"](target(s))
    # Trailing line breaks stay: "<|im_end|>" always splits them off.
    assert tok.text_ids("Hi\n\n") == tok.encode("Hi\n\n") == [13048, 271]


def test_bad_arguments():
    with pytest.raises(ValueError):
        TextTokenizer.from_dir(TOK_DIR, regex="gpt2")
    with pytest.raises(ValueError):
        TextTokenizer.from_dir(TOK_DIR, leading_newlines="keep")


# -- regex="auto" follows transformers 4.57.3 `_patch_mistral_regex` for local folders ------------
AUTO_CASES = [
    ({"transformers_version": "4.57.3", "model_type": "qwen3_tts"}, "mistral"),
    ({"transformers_version": "4.99.0", "model_type": "qwen3_tts"}, "mistral"),
    ({"model_type": "qwen3_tts"}, "mistral"),  # version missing
    ({"transformers_version": "4.57.2", "model_type": "qwen3_tts"}, "qwen2"),
    ({"transformers_version": "4.40.0", "model_type": "mistral"}, "mistral"),
    ({"transformers_version": "4.40.0"}, "mistral"),  # model_type missing
    ({"transformers_version": "5.0.0", "model_type": "qwen3_tts"}, "qwen2"),
    (None, "qwen2"),  # no config.json
]


@pytest.mark.parametrize(("config", "expected"), AUTO_CASES)
def test_auto_regex_follows_transformers(tmp_path, config, expected):
    from transformers import Qwen2TokenizerFast

    folder = _tokenizer_dir(tmp_path / "ckpt", config)
    assert reference_regex(folder) == expected
    probe = "… HelloWorld McDonald's"
    ref = Qwen2TokenizerFast.from_pretrained(str(folder), fix_mistral_regex=True)
    tok = TextTokenizer.from_dir(folder)
    assert tok.regex == expected
    assert tok.encode(probe) == ref(probe)["input_ids"]


def test_load_time():
    TextTokenizer.from_dir(TOK_DIR)  # warm the file cache
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        TextTokenizer.from_dir(TOK_DIR)
        best = min(best, time.perf_counter() - t0)
    print(f"TextTokenizer.from_dir: {best * 1000:.0f} ms")
    assert best < 2.0  # ~0.3-0.4 s on a quiet core; generous for a loaded CI machine


def test_a_lone_surrogate_is_a_clear_value_error(toks):
    """A str that UTF-8 cannot encode (JSON's "\\ud800") is refused before the BPE sees it."""
    tok = toks["qwen2"]
    for text in ("\ud800", "Hello \udfff world"):
        with pytest.raises(ValueError, match="lone surrogate"):
            tok.text_ids(text)
    with pytest.raises(ValueError, match="must be a str"):
        tok.encode(b"bytes")
