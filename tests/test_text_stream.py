"""TextStream: text arriving in pieces commits ids that are always the whole text's ids.

Property tests over the project's multilingual corpus, adversarial texts and random strings,
for both pre-tokenizer regexes: after every piece the committed ids are a prefix of
`TextTokenizer.text_ids(whole_text)`, and after `end()` they are all of it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from qwen3tts_jax.text_stream import TextStream
from qwen3tts_jax.text_tokenizer import TextTokenizer

DATA = Path(__file__).parent / "data"
TOK_DIR = DATA / "hf-configs" / "Qwen3-TTS-12Hz-0.6B-Base"
CORPUS = json.loads((DATA / "tokenizer_corpus.json").read_text())
ADVERSARIAL = [
    "Hello world  \n  \nNext line.", "x\n  \n y", "Hi!\n\nThere", "don't you'll WE'RE McDonald's", "a  b   c\t\td",
    "e\u0301te\u0301 cafe\u0301 and x\u0301\u0300y", "中文测试，没有空格。再来一句！", "日本語の文です。次の文も。",
    "emoji 😀👍🏽 family 👨\u200d👩\u200d👧 ok", "<|im_end|> inside <tts_pad> and <|im_ fragment <tts",
    "\n\nLeading newlines", "  \r\n leading", "\r\nHi", "3.14 is pi. 1,000,000!", "end with spaces   ",
    "tabs\tand\r\nCRLF.\r\n", "...\n...", "a\u200b\u00a0b \u3000c", "HelloWorld McDonald's iPhone", "!!!\n\n\n",
    "Quote: \"yes,\" he said.\n- item one\n- item two", "한국어 문장입니다. 그리고 하나 더.",
]
ALPHABET = list("ab cZ'.,!?\n\r\t é中😀<|>_-0123") + ["\u0301", "<|im_end|>", "<tts_pad>", "  ", "\n\n", "’"]


@pytest.fixture(scope="module", params=["mistral", "qwen2"])
def tok(request):
    return TextTokenizer.from_dir(TOK_DIR, regex=request.param)


def chunkings(text: str, rng: random.Random, n_random: int = 6):
    yield [text]
    yield list(text)  # one character at a time
    words = text.split(" ")
    yield [w + " " for w in words[:-1]] + words[-1:]  # LLM-like: a word and its space
    for _ in range(n_random):
        if len(text) < 2:
            return
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 10))))
        yield [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def streamed(tok: TextTokenizer, pieces: list[str], want: list[int] | None) -> list[int] | None:
    """Committed ids after feeding `pieces`, checking the prefix rule after each; None if the
    text is refused (as `text_ids` refuses it)."""
    s = TextStream(tok)
    try:
        for piece in pieces:
            new = s.append(piece)
            assert s.committed == (want or [])[:len(s.committed)], (pieces, piece)
            assert new == s.committed[len(s.committed) - len(new):]
        s.end()
    except ValueError:
        return None
    return s.committed


def whole(tok: TextTokenizer, text: str) -> list[int] | None:
    try:
        return tok.text_ids(text)
    except ValueError:
        return None


@pytest.mark.parametrize("source", ["corpus", "adversarial"])
def test_every_chunking_commits_the_whole_texts_ids(tok, source):
    rng = random.Random(1)
    texts = [t for t in CORPUS if t] if source == "corpus" else ADVERSARIAL
    for text in texts:
        want = whole(tok, text)
        for pieces in chunkings(text, rng):
            assert streamed(tok, pieces, want) == want, (text, pieces)


def test_random_strings_and_chunkings(tok):
    rng = random.Random(7)
    for _ in range(400):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 30)))
        want = whole(tok, text)
        for pieces in chunkings(text, rng, 3):
            assert streamed(tok, pieces, want) == want, (text, pieces)


def test_ids_commit_with_about_one_pre_token_of_delay(tok):
    """A word's ids are committed once the next word starts: not at the end of the text."""
    s = TextStream(tok)
    assert s.append("Hello") == []  # "Hello" may still grow ("Hellos")
    first = s.append(" wor")  # now it cannot
    assert first == tok.text_ids("Hello world")[:len(first)] and first
    assert s.pending_chars == len(" wor")
    s.append("ld, and more")
    assert tok.decode(s.committed) == "Hello world, and"
    s.end()
    assert s.committed == tok.text_ids("Hello world, and more")


def test_leading_line_breaks_follow_the_template_rule(tok):
    """Leading whitespace waits for the first character, then the template's alignment rule
    (drop leading line breaks that would merge with the role's newline) decides, as text_ids does."""
    for text in ("\n\nHello there.", "\r\nHi you.", "   \n  Spaced out."):
        s = TextStream(tok)
        for ch in text:
            s.append(ch)
        s.end()
        assert s.committed == tok.text_ids(text), text
    strict = TextTokenizer.from_dir(TOK_DIR, regex=tok.regex, leading_newlines="raise")
    s = TextStream(strict)
    s.append("\n")
    with pytest.raises(ValueError, match="line break"):
        s.append("\nHello")


def test_bad_use_is_a_clear_error(tok):
    s = TextStream(tok)
    with pytest.raises(ValueError, match="lone surrogate"):
        s.append("bad \ud800 text")
    s.append("Fine.")
    s.end()
    with pytest.raises(ValueError, match="ended"):
        s.append("more")
    with pytest.raises(ValueError, match="empty"):
        TextStream(tok).end()
    blank = TextStream(tok)  # only whitespace: ids to tokenize, but no words to speak
    for piece in ("   ", "\n\t", " "):
        blank.append(piece)
        assert blank.blank and blank.committed == []
    blank.append("a")
    assert not blank.blank
