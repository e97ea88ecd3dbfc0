"""`spro-mcore pav score`: per-step predictions of a trained verifier for given (prompt, response) pairs.

Input: JSONL rows with "prompt" and "response" strings (the prompt rendered as in training: data.chat_template).
Output, one JSONL row per input row: the step texts, Q^pi per state (index 0 = the prompt alone, then after
each step), the prover's Q (pav.prover / pav.prover_k: BoK formula) and its progress A^mu per step.
The verifier's own splitter is used; a different pav.splitter is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from spro_mcore.algo.progress import bok_q, progress
from spro_mcore.algo.step_split import canonical_splitter
from spro_mcore.algo.token_offsets import split_token_steps
from spro_mcore.config import load_config
from spro_mcore.config.schema import Config
from spro_mcore.errors import UserError
from spro_mcore.pav.batches import Response, make_batch


def read_score_rows(path: str) -> list[dict]:
    from spro_mcore.data.rows import iter_raw_rows

    rows = []
    for n, row in iter_raw_rows(path):
        for key in ("prompt", "response"):
            if not isinstance(row.get(key), str):
                raise UserError(f"{path}:{n}: field {key!r} must be a string")
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no rows to score")
    return rows


def score_texts(models, tokenizer, rows: list[dict], *, splitter: str, use_template: bool, prover: str, prover_k: int,
                micro_batch_size: int = 8) -> list[dict]:
    from spro_mcore.data.render import render_prompt, tokenize_prompts
    from spro_mcore.data.rows import PromptRow
    from spro_mcore.pav.verifier import predict_logits

    texts = [render_prompt(PromptRow(source=f"row {i + 1}", answer="", prompt=r["prompt"]), tokenizer, use_template)
             for i, r in enumerate(rows)]
    prompt_ids = tokenize_prompts(texts, tokenizer, use_template)
    responses, splits = [], []
    for i, (r, p) in enumerate(zip(rows, prompt_ids)):
        ids = tokenizer(r["response"], add_special_tokens=False)["input_ids"]
        split = split_token_steps(ids, tokenizer, splitter)
        splits.append((ids, split))
        read = [len(p) - 1] + [len(p) + end - 1 for _, end in split.spans]
        responses.append(Response(i, 0, list(p) + list(ids), read, [0.0] * len(read), 0.0))
    batch = make_batch(responses, length=max(len(r.input_ids) for r in responses),
                       steps=max(len(r.read_pos) for r in responses))
    q = torch.sigmoid(predict_logits(models, batch, micro_batch_size=min(micro_batch_size, len(rows)))).double()
    out = []
    for i, (ids, split) in enumerate(splits):
        qi = q[i, :split.num_steps + 1]
        q_mu = bok_q(qi, prover_k) if prover == "bok" else qi
        out.append({"steps": [tokenizer.decode(ids[a:b]) for a, b in split.spans], "q": qi.tolist(),
                    "q_prover": q_mu.tolist(), "progress": progress(q_mu).tolist()})
    return out


def score_main(config_path, overrides) -> int:
    from transformers import AutoTokenizer

    from spro_mcore.data.render import template_setting, uses_chat_template
    from spro_mcore.parallel import destroy
    from spro_mcore.pav.verifier import load_verifier, read_verifier_config
    from spro_mcore.trainer.run import start

    cfg: Config = load_config(config_path, overrides)
    p = cfg.pav
    if not p.score_input:
        raise UserError("pav score needs pav.score_input (a JSONL file of {\"prompt\", \"response\"} rows)")
    rows = read_score_rows(p.score_input)
    info = read_verifier_config(p.verifier_dir)
    if info.get("splitter") != canonical_splitter(p.splitter):
        raise UserError(f"the verifier in {p.verifier_dir} reads steps split by {info.get('splitter')}, "
                        f"not pav.splitter={canonical_splitter(p.splitter)}")
    output = Path(p.score_input).with_suffix(".scores.jsonl")
    cfg, layout = start(config_path, overrides)
    try:
        tokenizer = AutoTokenizer.from_pretrained(p.verifier_dir)
        template = uses_chat_template(tokenizer, template_setting(cfg.data.chat_template))
        chunks, _, _ = load_verifier(p.verifier_dir, cfg.model)
        scored = score_texts(chunks, tokenizer, rows, splitter=p.splitter, use_template=template, prover=p.prover,
                             prover_k=p.prover_k)
    finally:
        destroy()
    if layout.is_main:
        output.write_text("".join(json.dumps(s) + "\n" for s in scored))
        print(f"pav score: {len(scored)} responses -> {output}")
    return 0
