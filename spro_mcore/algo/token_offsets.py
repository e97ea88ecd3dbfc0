"""Token ids -> the response text and the character offset where each token ends (input of `step_split`).

Special tokens (EOS, pad, chat markers) contribute no text, as in `decode(skip_special_tokens=True)`, the
text the reward functions see. A token that ends inside a multi-byte character (byte-level BPE splits
UTF-8 sequences) ends after that character: its bytes already lie in it.

Two ways, same result:
- byte-level BPE tokenizers (GPT-2, Qwen, Llama 3): each token's bytes come from its byte-level symbols, so
  the offsets cost one pass over the tokens;
- any other tokenizer (SentencePiece, ...): decode every prefix and compare it with the full text (quadratic
  in the response length, but independent of how the tokenizer spells its tokens).
Duck-typed on the HF tokenizer API (`decode`, `convert_ids_to_tokens`, `all_special_ids`); no model here.
"""

from __future__ import annotations

import bisect
import functools
import json


@functools.lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable stand-in of every byte -> the byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def is_byte_level(tokenizer) -> bool:
    """True when the tokenizer's decoder is byte-level BPE (token strings spell bytes)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    return decoder.get("type") == "ByteLevel"


def _byte_level_ends(token_ids: list[int], tokenizer) -> tuple[str, list[int]]:
    table = _unicode_to_byte()
    special = set(tokenizer.all_special_ids)
    pieces = []
    for tid, symbol in zip(token_ids, tokenizer.convert_ids_to_tokens(list(token_ids))):
        pieces.append(b"" if tid in special or symbol is None else bytes(table[c] for c in symbol))
    data = b"".join(pieces)
    # surrogateescape: bytes that are not valid UTF-8 (a response cut mid-character) stay one character each
    text = data.decode("utf-8", errors="surrogateescape")
    char_starts, pos = [], 0
    for ch in text:
        char_starts.append(pos)
        pos += len(ch.encode("utf-8", errors="surrogateescape"))
    ends, byte_end = [], 0
    for piece in pieces:
        byte_end += len(piece)
        ends.append(bisect.bisect_left(char_starts, byte_end))  # characters begun before byte_end
    return text, ends


def _decode_ends(token_ids: list[int], tokenizer) -> tuple[str, list[int]]:
    text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    ends, last = [], 0
    for t in range(len(token_ids)):
        prefix = tokenizer.decode(list(token_ids[: t + 1]), skip_special_tokens=True)
        common = 0
        limit = min(len(prefix), len(text))
        while common < limit and prefix[common] == text[common]:
            common += 1
        if len(prefix) > common and common < len(text):  # a partial character decoded as U+FFFD: it has begun
            common += 1
        last = max(last, common)
        ends.append(last)
    return text, ends


def token_char_ends(token_ids: list[int], tokenizer, *, method: str = "auto") -> tuple[str, list[int]]:
    """(text, ends): `ends[t]` is the offset in `text` where token t ends. method: auto | bytes | decode."""
    if method not in ("auto", "bytes", "decode"):
        raise ValueError(f"method={method!r}: use auto, bytes or decode")
    if method == "bytes" or (method == "auto" and is_byte_level(tokenizer)):
        return _byte_level_ends(token_ids, tokenizer)
    return _decode_ends(token_ids, tokenizer)


def split_token_steps(token_ids: list[int], tokenizer, splitter, *, method: str = "auto"):
    """`step_split.split_steps` on token ids: the `StepSplit` of a response."""
    from spro_mcore.algo.step_split import split_steps

    text, ends = token_char_ends(token_ids, tokenizer, method=method)
    return split_steps(text, ends, splitter)
