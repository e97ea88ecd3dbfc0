"""Split a response into reasoning steps: text + where each token ends -> step spans and the step of every token.

Definitions (shared/spec/PAV.md): a step ends at a line break; empty lines belong to the step before them.
The splitter is a regular expression whose matches end steps:

    "\\n"            -> r"\\n+"    (every line is a step; a run of line breaks ends one step)
    "\\n\\n"          -> r"\\n\\n+"  (paragraphs: a single line break does not end a step)
    "regex:<pattern>" -> <pattern>  (a step ends where each match ends; the pattern must not match "")

Token t belongs to the step in which it ends: with e_t its end offset in the text, h(t) is the number of
step ends b with b < e_t, so a token whose last character is the line break stays in the step it closes,
and a token that starts before a line break and ends after it (byte-level BPE merges such as "=\\n" or
".\\nThe") belongs to the next step. A token of no text (EOS, other special tokens) ends where the token
before it ended, so it joins that token's step. Steps that no token ends in (one token spanning several
line breaks) are merged away: step indices are consecutive from 0.

Pure: no tokenizer here (see `algo/token_offsets.py` for token ids -> end offsets).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

_NAMED = {"\n": r"\n+", "\\n": r"\n+", "\n\n": r"\n\n+", "\\n\\n": r"\n\n+"}


def splitter_pattern(spec: str) -> re.Pattern:
    """The compiled step-end pattern of a splitter spec ("\\n", "\\n\\n" -- literal or backslash-escaped --
    or "regex:<pattern>"); ValueError naming the problem otherwise."""
    if spec in _NAMED:
        return re.compile(_NAMED[spec])
    if spec.startswith("regex:"):
        source = spec[len("regex:"):]
        try:
            pattern = re.compile(source)
        except re.error as e:
            raise ValueError(f"splitter {spec!r}: not a valid regular expression ({e})") from None
        if pattern.fullmatch("") is not None:
            raise ValueError(f"splitter {spec!r}: the pattern matches the empty string, so it would end a step "
                             f"everywhere; use a pattern that consumes at least one character")
        return pattern
    raise ValueError(f"unknown splitter {spec!r}: use '\\n', '\\n\\n' or 'regex:<pattern>'")


def canonical_splitter(spec: str) -> str:
    """One spelling per splitter (the escaped form), for manifests and compatibility checks."""
    splitter_pattern(spec)
    return {"\n": "\\n", "\n\n": "\\n\\n"}.get(spec, spec)


def step_ends(text: str, pattern: re.Pattern) -> list[int]:
    """Offsets in `text` where steps end (the end of every match), increasing."""
    return [m.end() for m in pattern.finditer(text)]


@dataclass(frozen=True)
class StepSplit:
    step_of_token: tuple[int, ...]  # h(t) for every token, 0-based, non-decreasing, consecutive
    spans: tuple[tuple[int, int], ...]  # token range [start, end) of each step, covering all tokens

    @property
    def num_steps(self) -> int:
        return len(self.spans)

    @property
    def last_tokens(self) -> list[int]:
        """Index of each step's last token (where a verifier reads its value)."""
        return [end - 1 for _, end in self.spans]


def split_steps(text: str, token_ends: list[int], splitter: str | re.Pattern) -> StepSplit:
    """Steps of a response whose tokens end at `token_ends` (offsets into `text`, non-decreasing)."""
    pattern = splitter if isinstance(splitter, re.Pattern) else splitter_pattern(splitter)
    if any(b < a for a, b in zip(token_ends, token_ends[1:])):
        raise ValueError("token end offsets must be non-decreasing")
    if token_ends and not 0 <= token_ends[-1] <= len(text):
        raise ValueError(f"token end offset {token_ends[-1]} lies outside the text (length {len(text)})")
    ends = step_ends(text, pattern)
    raw = [bisect.bisect_left(ends, e) for e in token_ends]  # number of step ends strictly before e
    steps: list[int] = []
    spans: list[tuple[int, int]] = []
    for t, r in enumerate(raw):
        if t == 0 or r != raw[t - 1]:
            spans.append((t, t + 1))
        else:
            spans[-1] = (spans[-1][0], t + 1)
        steps.append(len(spans) - 1)
    return StepSplit(step_of_token=tuple(steps), spans=tuple(spans))
