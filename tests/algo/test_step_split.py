"""Step splitting on text + token end offsets, against hand-made cases (spec: shared/spec/PAV.md)."""
from __future__ import annotations

import pytest

from spro_mcore.algo.step_split import canonical_splitter, split_steps, splitter_pattern

pytestmark = pytest.mark.unit


def ends_of(pieces: list[str]) -> tuple[str, list[int]]:
    text, ends, pos = "", [], 0
    for p in pieces:
        text += p
        pos += len(p)
        ends.append(pos)
    return text, ends


def steps(pieces, splitter="\n"):
    text, ends = ends_of(pieces)
    return list(split_steps(text, ends, splitter).step_of_token)


def test_one_step_per_line_and_spans():
    text, ends = ends_of(["4*2", "=8", "\n", "3+8", "=11", "\n", "A: 11"])
    s = split_steps(text, ends, "\n")
    assert s.step_of_token == (0, 0, 0, 1, 1, 1, 2)
    assert s.spans == ((0, 3), (3, 6), (6, 7))
    assert s.num_steps == 3 and s.last_tokens == [2, 5, 6]


def test_token_straddling_a_line_break_belongs_to_the_step_it_ends_in():
    # "=\n" closes step 0; ".\nA" starts with step 0's line break but ends in step 1
    assert steps(["x", "=\n", "y", ".\nA", "b"]) == [0, 0, 1, 2, 2]


def test_empty_lines_belong_to_the_step_before():
    assert steps(["a", "\n", "\n", "\n", "b", "\n"]) == [0, 0, 0, 0, 1, 1]
    assert steps(["a", "\n\n", "b"]) == [0, 0, 1]


def test_no_newline_is_one_step_and_eos_joins_the_last_step():
    assert steps(["abc", "def"]) == [0, 0]
    assert steps(["a", "\n", "b", "\n", ""]) == [0, 0, 1, 1, 1]  # EOS (no text) after the last line break
    assert steps(["a", "\n", "b", ""]) == [0, 0, 1, 1]
    assert steps([""]) == [0]
    assert split_steps("", [], "\n").num_steps == 0


def test_token_spanning_several_line_breaks_merges_steps():
    assert steps(["a", "\nb\nc", "\n", "d"]) == [0, 1, 1, 2]


def test_paragraph_splitter():
    assert steps(["a", "\n", "b", "\n\n", "c", "\n", "\n", "\n", "d"], "\n\n") == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert steps(["a", "\n", "b"], "\\n\\n") == [0, 0, 0]


def test_regex_splitter():
    assert steps(["x=1", ";", " y=2", ";", "z"], "regex:;") == [0, 0, 1, 1, 2]
    assert steps(["Step 1", " ok ", "Step 2", " ok"], "regex:ok ") == [0, 0, 1, 1]


def test_splitter_specs():
    assert splitter_pattern("\\n").pattern == splitter_pattern("\n").pattern
    assert canonical_splitter("\n") == "\\n" and canonical_splitter("\n\n") == "\\n\\n"
    with pytest.raises(ValueError, match="empty string"):
        splitter_pattern("regex:x*")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        splitter_pattern("regex:(")
    with pytest.raises(ValueError, match="unknown splitter"):
        splitter_pattern("lines")


def test_bad_offsets():
    with pytest.raises(ValueError, match="non-decreasing"):
        split_steps("ab", [2, 1], "\n")
    with pytest.raises(ValueError, match="outside the text"):
        split_steps("ab", [1, 3], "\n")
