"""Turn a prompt row into the text and token ids the policy sees.

With a chat template (the tokenizer's own, unless told otherwise) the prompt is rendered as a conversation
ending in the assistant's turn (``add_generation_prompt=True``); a plain ``prompt`` string becomes one user
message. Without one, a plain ``prompt`` is used as is, and chat ``messages`` are an error: there is no
faithful way to flatten a conversation the model was never trained on.
"""

from __future__ import annotations

from spro_mcore.data.rows import DataError, PromptRow


def template_setting(setting: str) -> bool | None:
    """``data.chat_template`` (auto | always | never) as the flag the functions below take."""
    return {"auto": None, "always": True, "never": False}[setting]


def uses_chat_template(tokenizer, chat_template: bool | None = None) -> bool:
    """``chat_template``: True forces it (error if the tokenizer has none), False disables it, None = auto."""
    has = getattr(tokenizer, "chat_template", None) is not None
    if chat_template and not has:
        raise DataError(f"chat_template=True but the tokenizer {tokenizer.name_or_path!r} has no chat template")
    return has if chat_template is None else chat_template


def render_prompt(row: PromptRow, tokenizer, use_template: bool) -> str:
    """The prompt text of ``row`` as the policy should see it."""
    if use_template:
        messages = row.messages if row.messages is not None else [{"role": "user", "content": row.prompt}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if row.messages is not None:
        raise DataError(
            f"{row.source}: chat messages given, but the tokenizer has no chat template (or it was disabled): "
            f"use a plain prompt field or a tokenizer with a chat template"
        )
    return row.prompt


def tokenize_prompts(texts: list[str], tokenizer, use_template: bool) -> list[list[int]]:
    """Token ids of rendered prompts. A chat template writes its own special tokens (BOS included), so the
    tokenizer adds none then; a plain prompt gets the tokenizer's usual ones (e.g. Llama's BOS)."""
    return tokenizer(texts, add_special_tokens=not use_template)["input_ids"]
