"""Token ids -> steps with real tokenizers: hand-made cases, and a property test against a character-level
reference built from the tokenizer's own offset mapping (Rust `tokenizers`) on random text."""
from __future__ import annotations

import random

import pytest

from spro_mcore.algo.step_split import split_steps
from spro_mcore.algo.token_offsets import is_byte_level, split_token_steps, token_char_ends

pytestmark = pytest.mark.unit

ALPHABET = ["a", "b", " ", "1", "=", ".", "é", "中", "😀", "\n", "\n", "\n"]


@pytest.fixture(scope="module")
def tiny_base_tokenizer():
    from transformers import AutoTokenizer

    from spro_mcore.trainer.setup import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("builtin:tiny_base"))


@pytest.fixture(scope="module")
def crossing_bpe():
    """A byte-level BPE trained without pre-splitting, so its merges cross line breaks ("a\\n", "\\nb", "\\n\\n"...)
    and split multi-byte characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = ["".join(rng.choice(ALPHABET) for _ in range(200)) for _ in range(200)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def reference_steps(text: str, offsets: list[tuple[int, int]], min_run: int) -> list[int]:
    """Character scan: a step ends after a run of >= min_run line breaks; token t is in the step of the last
    character it covers (tokens with no characters join the token before). Consecutive numbering."""
    line_of_char, step, i = [], 0, 0
    while i < len(text):
        j = i
        while j < len(text) and text[j] == "\n":
            j += 1
        if j > i:  # a run of line breaks [i, j)
            line_of_char += [step] * (j - i)
            if j - i >= min_run:
                step += 1
            i = j
        else:
            line_of_char.append(step)
            i += 1
    out, prev_end = [], 0
    for start, end in offsets:
        end = max(end, prev_end)
        prev_end = end
        out.append(line_of_char[end - 1] if end > 0 else 0)
    renum, seen = [], {}
    for s in out:
        seen.setdefault(s, len(seen))
        renum.append(seen[s])
    return renum


def test_tiny_base_is_byte_level_with_a_token_across_the_line_break(tiny_base_tokenizer):
    tok = tiny_base_tokenizer
    assert is_byte_level(tok)
    ids = tok("Q: 3+4=\n7\nA: 7", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    pieces = tok.convert_ids_to_tokens(ids)
    assert "=Ċ" in pieces  # "=\n" is one token: it closes the first line
    split = split_token_steps(ids, tok, "\n")
    text = [tok.decode(ids[a:b], skip_special_tokens=True) for a, b in split.spans]
    assert text == ["Q: 3+4=\n", "7\n", "A: 7"]
    assert split.step_of_token[-1] == 2  # EOS joins the last step


def test_multibyte_characters_split_across_tokens():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # byte-level tokens, no merges: "中" is three tokens, the first two end inside the character
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<eos>": 0, **{c: i + 1 for i, c in enumerate(sorted(alphabet))}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    ids = hf("a\n中\n", add_special_tokens=False)["input_ids"] + [0]
    assert len(ids) == 1 + 1 + 3 + 1 + 1
    text, ends = token_char_ends(ids, hf)
    assert text == "a\n中\n" and ends == [1, 2, 3, 3, 3, 4, 4]  # a token ending inside 中 has begun it
    assert list(split_steps(text, ends, "\n").step_of_token) == [0, 0, 1, 1, 1, 1, 1]
    assert token_char_ends(ids, hf, method="decode") == (text, ends)


@pytest.mark.parametrize("method", ["auto", "decode"])
@pytest.mark.parametrize("splitter,min_run", [("\n", 1), ("\n\n", 2)])
def test_property_against_character_reference(crossing_bpe, method, splitter, min_run):
    tok = crossing_bpe
    rng = random.Random(1 + min_run)
    crossing = 0
    for _ in range(150):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 60)))
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        if rng.random() < 0.5:
            ids.append(tok.eos_token_id)
            offsets.append((len(text), len(text)))
        pieces = tok.convert_ids_to_tokens(ids)
        crossing += sum(("Ċ" in p and not p.endswith("Ċ")) for p in pieces)
        decoded, ends = token_char_ends(ids, tok, method=method)
        assert decoded == text
        got = list(split_steps(decoded, ends, splitter).step_of_token)
        assert got == reference_steps(text, offsets, min_run), (text, pieces)
    assert crossing > 20  # the case under test really happened: tokens that start before a line break and end after
