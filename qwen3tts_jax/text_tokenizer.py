"""Qwen2 byte-level BPE text tokenizer and the Qwen3-TTS prompt templates, without transformers.

The reference (`qwen-tts` 0.1.1) tokenizes with `Qwen2TokenizerFast`, converted at load time
from `vocab.json` + `merges.txt` (there is no `tokenizer.json`). This module rebuilds the same
pipeline directly with the `tokenizers` library, as transformers' `Qwen2Converter` does:
NFC normalizer; pre-tokenizer `Sequence([Split(regex, "isolated"), ByteLevel(no prefix
space, no regex)])`; BPE with no unk token, no dropout; ByteLevel decoder. The added tokens of
`tokenizer_config.json` (`added_tokens_decoder`, ids 151643..151675, none normalized) are
recognised anywhere in the text, as the reference does with `split_special_tokens=False`.
No special tokens are added around the text (the Qwen2 post-processor adds none either).

Pre-tokenizer regex (REFERENCE-FACTS gotcha 13). The reference loads its processor with
`AutoProcessor.from_pretrained(path, fix_mistral_regex=True)`. In transformers 4.57.3,
`PreTrainedTokenizerBase._patch_mistral_regex` then swaps the Qwen2 Split regex for the
"Mistral" one when all of these hold:
  - the base vocab (vocab.json) has more than 100000 entries, and
  - `path` is a local directory holding a `config.json`, whose `transformers_version` is
    missing, or above 4.57.2 and below 5.0.0, or at most 4.57.2 with a `model_type` that is
    missing or one of mistral/mistral3/voxtral/ministral/pixtral.
Loaded from a hub id (a non-Mistral model) the plain Qwen2 regex stays. The released
checkpoints carry `transformers_version: "4.57.3"`, so the reference run from a local folder
uses the Mistral regex. The two regexes differ on mixed-case words and contractions:
"HelloWorld McDonald's" is `21927 10134 4483 18234 594` (mistral) vs `90071 30914 594` (qwen2).

`regex=` picks it: "mistral", "qwen2", or "auto" (the default), which applies the rule above to
the folder being loaded, so it always matches the reference loading that same local folder
with transformers 4.57.3. For the released checkpoints "auto" resolves to "mistral". A folder
downloaded from the hub is still a local folder here; to mirror a reference that was given the
hub id instead (`Qwen3TTSModel.from_pretrained("Qwen/...")`), pass regex="qwen2".
`TextTokenizer.regex` tells which one was used.

Templates (reference `Qwen3TTSModel._build_assistant_text`, `_build_ref_text`,
`_build_instruct_text`); each string is tokenized on its own:
  target:   "<|im_start|>assistant\\n{text}<|im_end|>\\n<|im_start|>assistant\\n"
            ids = [151644, 77091, 198, t_0 .. t_{n-1}, 151645, 198, 151644, 77091, 198];
            role = ids[:3], text = ids[3:-5] (the reference also uses ids[3:4] and ids[4:-5])
  ref:      "<|im_start|>assistant\\n{ref_text}<|im_end|>\\n"; ref text = ref_ids[3:-2]
  instruct: "<|im_start|>user\\n{instruct}<|im_end|>\\n" (used whole, never sliced)

Leading line breaks (gotcha 14). The reference's fixed slices assume the "\\n" after
"assistant" stays its own token (198). When the text's leading whitespace contains "\\r" or
"\\n", the pre-tokenizer's `\\s*[\\r\\n]+` branch glues it to the template's "\\n", and BPE may
merge across the boundary: "\\n" + "\\nHello" gives 271 ("\\n\\n") instead of 198, so the
reference silently embeds a different role token and loses the text's line break into it.
Whether it merges depends on BPE ("\\n" + "\\r\\nHi" stays 198, 319, ...). The template ids
are correctly aligned exactly when `ids[:3]` is the role's own ids (the tokens' bytes
concatenate to the input), and the suffix always splits off at "<|im_end|>". So every
template encoding is checked:
  - aligned (all normal text, and leading line breaks that do not merge): returned as is,
    identical to the reference;
  - misaligned, `leading_newlines="strip"` (default): the text's leading whitespace up to and
    including its last "\\r"/"\\n" is dropped (it carries no speech; whitespace after it
    cannot merge) and the template is tokenized again;
  - misaligned, `leading_newlines="raise"`: ValueError.
Anything still misaligned raises ValueError. Empty text (before or after stripping) raises
ValueError too: the reference's prompt needs a first text token, and the reference treats an
empty ref_text as "no reference text" (None), so callers should not tokenize one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

# transformers 4.57.3 convert_slow_tokenizer.Qwen2Converter.
QWEN2_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# transformers 4.57.3 PreTrainedTokenizerBase._patch_mistral_regex.
MISTRAL_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
REGEXES = {"qwen2": QWEN2_REGEX, "mistral": MISTRAL_REGEX}
RegexName = Literal["auto", "mistral", "qwen2"]
LeadingNewlines = Literal["strip", "raise"]

# Model types for which transformers 4.57.3 patches a local folder saved by <= 4.57.2.
_MISTRAL_MODEL_TYPES = ("mistral", "mistral3", "voxtral", "ministral", "pixtral")

ROLE = "<|im_start|>assistant\n"
TARGET_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
REF_SUFFIX = "<|im_end|>\n"
INSTRUCT_PREFIX = "<|im_start|>user\n"
# The reference slices these counts off: ids[:3], ids[3:-5], ref_ids[3:-2].
ROLE_LEN, TARGET_SUFFIX_LEN, REF_SUFFIX_LEN = 3, 5, 2

# Leading whitespace up to and including its last CR/LF (greedy `\s*` backtracks to it).
_LEADING_NEWLINES = re.compile(r"\s*[\r\n]")


def reference_regex(path: str | Path, vocab_size: int | None = None) -> Literal["mistral", "qwen2"]:
    """The regex transformers 4.57.3 uses for `from_pretrained(path, fix_mistral_regex=True)`.

    `path` is a local folder with `vocab.json` (and maybe `config.json`); `vocab_size` is the
    number of vocab.json entries, read from the folder when not given. See the module docstring
    for the rule.
    """
    path = Path(path)
    if vocab_size is None:
        with open(path / "vocab.json", encoding="utf-8") as f:
            vocab_size = len(json.load(f))
    if vocab_size <= 100000 or not (path / "config.json").is_file():
        return "qwen2"
    with open(path / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    version_str = config.get("transformers_version")
    if version_str:
        from packaging.version import Version

        version = Version(version_str)
        if version <= Version("4.57.2"):
            model_type = config.get("model_type")
            if model_type is not None and model_type not in _MISTRAL_MODEL_TYPES:
                return "qwen2"
        elif version >= Version("5.0.0"):
            return "qwen2"
    return "mistral"


def _read_merges(path: Path) -> list[tuple[str, str]]:
    """Read merges.txt exactly as transformers' slow `Qwen2Tokenizer` does."""
    merges = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            line = line.strip()
            if (i == 0 and line.startswith("#version:")) or not line:
                continue
            merges.append(tuple(line.split()))
    return merges


def build_tokenizer(
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    added_tokens: dict[int, dict],
    regex: Literal["mistral", "qwen2"],
) -> Tokenizer:
    """The `tokenizers.Tokenizer` transformers builds for Qwen2TokenizerFast (ids only)."""
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(REGEXES[regex]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    # Added tokens take the next free ids in order; check each lands on its configured id.
    for idx in sorted(added_tokens):
        spec = added_tokens[idx]
        token = AddedToken(
            spec["content"],
            single_word=spec.get("single_word", False),
            lstrip=spec.get("lstrip", False),
            rstrip=spec.get("rstrip", False),
            normalized=spec.get("normalized", not spec.get("special", False)),
            special=spec.get("special", False),
        )
        if spec.get("special", False):
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])
        got = tok.token_to_id(spec["content"])
        if got != idx:
            raise ValueError(f"added token {spec['content']!r} got id {got}, config says {idx}")
    return tok


class TextTokenizer:
    """Qwen2 byte-level BPE with the Qwen3-TTS templates; see the module docstring."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        regex: Literal["mistral", "qwen2"],
        leading_newlines: LeadingNewlines = "strip",
    ):
        if leading_newlines not in ("strip", "raise"):
            raise ValueError(f"leading_newlines must be 'strip' or 'raise', got {leading_newlines!r}")
        self.tokenizer = tokenizer
        self.regex = regex
        self.leading_newlines = leading_newlines
        self.role_ids = self.encode(ROLE)
        self.target_suffix_ids = self.encode(TARGET_SUFFIX)
        self.ref_suffix_ids = self.encode(REF_SUFFIX)
        lens = (len(self.role_ids), len(self.target_suffix_ids), len(self.ref_suffix_ids))
        if lens != (ROLE_LEN, TARGET_SUFFIX_LEN, REF_SUFFIX_LEN):
            raise ValueError(f"template token counts {lens} do not fit the reference slices")

    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        regex: RegexName = "auto",
        leading_newlines: LeadingNewlines = "strip",
    ) -> TextTokenizer:
        """Load `vocab.json`, `merges.txt` and `tokenizer_config.json` from a checkpoint folder."""
        path = Path(path)
        if regex not in ("auto", *REGEXES):
            raise ValueError(f"regex must be 'auto', 'mistral' or 'qwen2', got {regex!r}")
        with open(path / "vocab.json", encoding="utf-8") as f:
            vocab = json.load(f)
        if regex == "auto":
            regex = reference_regex(path, len(vocab))
        with open(path / "tokenizer_config.json", encoding="utf-8") as f:
            config = json.load(f)
        if config.get("split_special_tokens", False):
            raise ValueError("split_special_tokens=True is not supported")
        added = {int(k): v for k, v in config.get("added_tokens_decoder", {}).items()}
        tok = build_tokenizer(vocab, _read_merges(path / "merges.txt"), added, regex)
        return cls(tok, regex, leading_newlines)

    # -- plain tokenization ------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; added tokens in it are recognised, none are added around it.

        ValueError for what is not a str of Unicode scalar values (a lone surrogate such as
        "\\ud800", which JSON can carry, has no UTF-8 form for the byte-level BPE)."""
        check_text(text)
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids` (byte-level decode; invalid UTF-8 becomes U+FFFD, as `errors="replace"`)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def __len__(self) -> int:
        """Vocabulary size including added tokens (151676 for the released checkpoints)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    # -- templates ---------------------------------------------------------------------------
    def _template(self, text: str, suffix: str, suffix_ids: list[int], what: str) -> list[int]:
        """Encode ROLE + text + suffix; repair or reject a role/text merge (see module docstring)."""
        if not text:
            raise ValueError(f"{what} is empty")
        ids = self.encode(f"{ROLE}{text}{suffix}")
        if ids[:ROLE_LEN] != self.role_ids:
            m = _LEADING_NEWLINES.match(text)
            if m is not None and self.leading_newlines == "raise":
                raise ValueError(
                    f"{what} starts with a line break ({text[:m.end()]!r}) that merges with the "
                    "template's '\\n' and would shift the reference's fixed slices"
                )
            if m is not None:
                text = text[m.end():]
                if not text:
                    raise ValueError(f"{what} is empty after dropping its leading line breaks")
                ids = self.encode(f"{ROLE}{text}{suffix}")
        n_suffix = len(suffix_ids)
        if len(ids) < ROLE_LEN + n_suffix or ids[:ROLE_LEN] != self.role_ids or ids[-n_suffix:] != suffix_ids:
            raise ValueError(f"{what} {text!r} does not tokenize into role + text + suffix: {ids}")
        return ids

    def assistant_ids(self, text: str) -> list[int]:
        """Ids of the target template: role (3) + text + "<|im_end|>\\n<|im_start|>assistant\\n" (5)."""
        return self._template(text, TARGET_SUFFIX, self.target_suffix_ids, "text")

    def ref_ids(self, ref_text: str) -> list[int]:
        """Ids of the reference-text template: role (3) + ref text + "<|im_end|>\\n" (2)."""
        return self._template(ref_text, REF_SUFFIX, self.ref_suffix_ids, "ref_text")

    def instruct_ids(self, instruct: str) -> list[int]:
        """Ids of "<|im_start|>user\\n{instruct}<|im_end|>\\n" (used whole by the reference)."""
        return self.encode(f"{INSTRUCT_PREFIX}{instruct}{REF_SUFFIX}")

    def text_ids(self, text: str) -> list[int]:
        """The target text's ids as the reference slices them: `assistant_ids(text)[3:-5]`."""
        return split_assistant(self.assistant_ids(text))[1]

    def ref_text_ids(self, ref_text: str) -> list[int]:
        """The reference text's ids as the reference slices them: `ref_ids(ref_text)[3:-2]`."""
        return split_ref(self.ref_ids(ref_text))


def check_text(text: str, what: str = "text") -> None:
    """ValueError unless `text` is a str that UTF-8 can encode (no lone surrogates)."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} is not valid Unicode: {e.object[e.start:e.end]!r} at position {e.start} "
                         "is a lone surrogate") from None


def split_assistant(ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """(role ids `ids[:3]`, text ids `ids[3:-5]`) of a target-template encoding."""
    ids = list(ids)
    return ids[:ROLE_LEN], ids[ROLE_LEN:-TARGET_SUFFIX_LEN]


def split_ref(ref_ids: Sequence[int]) -> list[int]:
    """Reference-text ids `ref_ids[3:-2]` of a ref-template encoding."""
    return list(ref_ids)[ROLE_LEN:-REF_SUFFIX_LEN]
