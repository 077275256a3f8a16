"""Text that arrives in pieces -> target-text ids, always a prefix of the whole text's ids.

`TextStream(tokenizer)` takes pieces of text in order (`append`) and hands out the ids it can
commit: at every moment `committed == tokenizer.text_ids(whole_text)[:len(committed)]`,
whatever the chunking (mid-word, mid-character sequence, whitespace runs with line breaks,
CJK, emoji, combining marks, fragments of added tokens), and after `end()` the committed ids
are exactly `text_ids(whole_text)`. That is what lets a talker consume text while it is still
being written (an LLM's answer) and make the same codes as from the whole text.

Why ids can be committed early at all: the byte-level BPE works inside pre-tokens, the
pre-tokenizer's regex matches leftmost-first with no look-behind (restarting it at a match
boundary gives the same later matches), and added tokens split the text into segments first.
So a pre-token is final once something after it shows where it ends. The rule, applied to the
not-yet-committed tail after every append:
  (a) hold back a suffix that could still become an added token ("<|im_" + "end|>");
  (b) hold back the trailing whitespace run (`\\s+(?!\\S)` reads end-of-text differently from
      whitespace before a letter: "a  " is "a", "  " but "a  b" is "a", " ", " b");
  (c) hold back the last pre-token before that, unless a known character follows it: one not
      held back, or a held space or tab (a letter run grows; a punctuation run takes following
      line breaks, `...[\\r\\n]*`; a run before a would-be added token ends there if it is one);
  (d) never cut before a combining mark (NFC could still reorder or compose across the cut).
Committed ids are read by offset from an encoding of the whole tail, never by encoding a
fragment on its own (a fragment's end is an end-of-text the whole text does not have).

Leading whitespace is held until the first other character arrives, then the template's
alignment check of `TextTokenizer._template` decides it once (the role's "\\n" and leading
line breaks form one pre-token). Unicode is normalized (NFC) over the tail, as the tokenizer's
normalizer does over the whole text. About one pre-token is held back: typically one LLM token,
and in CJK (no spaces) a clause.
"""

from __future__ import annotations

import unicodedata

from qwen3tts_jax.text_tokenizer import _LEADING_NEWLINES, ROLE, ROLE_LEN, TextTokenizer, check_text

SPACE_OR_TAB = " \t"


class TextStream:
    """One text arriving in pieces; see the module docstring. Not thread-safe."""

    def __init__(self, tokenizer: TextTokenizer):
        self.tok = tokenizer
        self.committed: list[int] = []
        self.ended = False
        self.chars = 0  # characters appended in all
        self._tail = ""  # normalized text not yet committed
        self._at_start = True  # nothing committed yet: the tail is read after the role template
        self._added = [t.content for t in tokenizer.tokenizer.get_added_tokens_decoder().values()]
        self._longest_added = max((len(a) for a in self._added), default=0)

    def append(self, text: str) -> list[int]:
        """Add the next piece; returns the ids newly committed (maybe none)."""
        if self.ended:
            raise ValueError("the text has ended")
        check_text(text)
        self.chars += len(text)
        self._tail = unicodedata.normalize("NFC", self._tail + text)
        if self._at_start and not self._tail.strip():
            return []  # only whitespace so far: the template's alignment needs the first character
        if self._at_start:
            self._align_start()
        return self._commit(self._boundary())

    def end(self) -> list[int]:
        """The text is complete: commit the rest. ValueError if it had no text at all."""
        if self.ended:
            raise ValueError("the text has ended")
        self.ended = True
        if self._at_start:  # nothing committed: exactly the whole-text path
            new = self.tok.text_ids(self._tail)
        else:
            new = [i for i, _ in self._tokens(len(self._tail))]
        self.committed += new
        self._tail = ""
        return new

    @property
    def blank(self) -> bool:
        """Nothing but whitespace has come (yet): no words to speak."""
        return self._at_start and not self._tail.strip()

    @property
    def pending_chars(self) -> int:
        """Characters received and not yet committed as ids."""
        return len(self._tail)

    # -- the rule ------------------------------------------------------------------------------
    def _align_start(self) -> None:
        """The template check of `TextTokenizer._template`, once the leading whitespace is complete."""
        ids = self.tok.encode(ROLE + self._tail)
        if ids[:ROLE_LEN] == self.tok.role_ids:
            return
        m = _LEADING_NEWLINES.match(self._tail)
        if m is None:
            raise ValueError(f"text {self._tail[:40]!r} does not tokenize after the role template")
        if self.tok.leading_newlines == "raise":
            raise ValueError(f"text starts with a line break ({self._tail[:m.end()]!r}) that merges with the "
                             "template's '\\n' and would shift the reference's fixed slices")
        self._tail = self._tail[m.end():]
        if self.tok.encode(ROLE + self._tail)[:ROLE_LEN] != self.tok.role_ids:
            raise ValueError(f"text {self._tail[:40]!r} does not tokenize after the role template")

    def _context(self) -> str:
        return ROLE if self._at_start else ""

    def _encode_tail(self):
        return self.tok.tokenizer.encode(self._context() + self._tail, add_special_tokens=False)

    def _boundary(self) -> int:
        """How many characters of the tail can be committed now (rules a-d)."""
        tail = self._tail
        limit = len(tail)
        for k in range(min(self._longest_added - 1, limit), 0, -1):  # (a)
            if any(a.startswith(tail[-k:]) for a in self._added):
                limit -= k
                break
        limit = len(tail[:limit].rstrip())  # (b): Python's whitespace includes all of the regex's \s
        if limit == 0:
            return 0
        enc = self._encode_tail()
        c = len(self._context())
        words: dict[int, tuple[int, int]] = {}  # pre-token -> (start, end) in the tail
        for word, (start, end) in zip(enc.word_ids, enc.offsets, strict=True):
            if word is None or end - c <= 0:
                continue
            s, e = words.get(word, (start - c, end - c))
            words[word] = (min(s, start - c), max(e, end - c))
        ends = sorted({e for s, e in words.values() if e <= limit})
        # (c) A pre-token is final once a known character follows it (its regex match ends there,
        # and the only look-ahead, `(?!\S)`, reads one character): one inside the limit, or a
        # held space or tab (a punctuation run could still take a held line break).
        while ends and not (ends[-1] < limit or tail[ends[-1]:ends[-1] + 1] in tuple(SPACE_OR_TAB)):
            ends.pop()
        while ends and ends[-1] < len(tail) and unicodedata.combining(tail[ends[-1]]):  # (d)
            ends.pop()
        return ends[-1] if ends else 0

    def _tokens(self, upto: int) -> list[tuple[int, int]]:
        """(id, end) of the tail's tokens ending at or before `upto`, the role's excluded."""
        enc = self._encode_tail()
        c = len(self._context())
        out = [(i, e - c) for i, (s, e) in zip(enc.ids, enc.offsets, strict=True) if e - c <= upto]
        if self._at_start:
            if [i for i, _ in out[:ROLE_LEN]] != self.tok.role_ids:
                raise ValueError("the role template did not tokenize on its own")
            out = out[ROLE_LEN:]
        return out

    def _commit(self, cut: int) -> list[int]:
        if cut <= 0:
            return []
        new = [i for i, e in self._tokens(cut) if e > 0]
        self.committed += new
        self._tail = self._tail[cut:]
        self._at_start = False
        return new
