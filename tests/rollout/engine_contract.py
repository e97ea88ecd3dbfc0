"""The checks every engine backend must pass (called from each backend's test module).

Each compares the engine against the independent HF reference (see rollout_helpers.py) and is built so a
missing feature fails it: the pre-update gap to the NEW weights must be large (a stale engine fails the
post-update parity), prompts exceed one 128-token KV block (a stale prefix cache fails), seeds must
reproduce and differ, a stop token must end a sample exactly where it was drawn.
"""

from __future__ import annotations

import torch

from tests.rollout.rollout_helpers import TINY_QWEN2, hf_state_dict, long_prompts, max_logprob_gap
from spro_mcore.rollout.engine import SamplingParams

TOL = 1e-4  # fp32 engine vs fp32 HF reference
TEMPERATURE = 0.8


def check_shapes(groups, n_prompts, sampling):
    stop_ids = sampling.stop_ids([TINY_QWEN2["eos_token_id"]])
    assert len(groups) == n_prompts
    for group in groups:
        assert len(group) == sampling.n
        for s in group:
            assert 1 <= len(s.token_ids) == len(s.logprobs) <= sampling.max_new_tokens
            assert all(lp <= 0.0 for lp in s.logprobs)
            if s.finish_reason == "length":
                assert len(s.token_ids) == sampling.max_new_tokens
            else:
                assert s.finish_reason == "stop" and s.token_ids[-1] in stop_ids
                assert not set(s.token_ids[:-1]) & set(stop_ids)


def check_parity_across_update(engine, start_path, new_path, reference):
    """Engine log-probs equal the reference before (old weights) and after (new weights) an update, and the
    old log-probs are far from the new weights' (so stale weights would fail the second parity)."""
    prompts = long_prompts()
    sampling = SamplingParams(n=3, temperature=TEMPERATURE, max_new_tokens=16, seed=7)
    before = engine.generate(prompts, sampling)  # also fills any prefix cache with the old weights
    check_shapes(before, len(prompts), sampling)
    assert max_logprob_gap(reference, start_path, prompts, before, TEMPERATURE) <= TOL
    assert max_logprob_gap(reference, new_path, prompts, before, TEMPERATURE) > 0.5

    new_weights = hf_state_dict(new_path)
    stats = engine.update_weights(new_weights.items())
    assert stats.bytes == sum(t.numel() * t.element_size() for t in new_weights.values())
    assert stats.tensors == len(new_weights) and stats.seconds > 0

    after = engine.generate(prompts, sampling)
    check_shapes(after, len(prompts), sampling)
    assert max_logprob_gap(reference, new_path, prompts, after, TEMPERATURE) <= TOL
    assert max_logprob_gap(reference, start_path, prompts, after, TEMPERATURE) > 0.5


def check_seeded_sampling(engine):
    """Same seed: same samples; another seed or another prompt slot: different samples."""
    prompts = long_prompts(2, lengths=(140,)) + long_prompts(1, lengths=(140,))  # prompt 2 repeats prompt 0
    sampling = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=11)
    tokens = lambda groups: [[s.token_ids for s in g] for g in groups]  # noqa: E731
    first = tokens(engine.generate(prompts, sampling))
    assert first == tokens(engine.generate(prompts, sampling))
    assert first != tokens(engine.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=12)))
    assert first[0] != first[2]  # same prompt in another slot draws other samples
    assert first[0][0] != first[0][1]  # the samples of one group differ


def check_stop_token(engine):
    """Replaying a seeded call with a token that was drawn mid-sample as stop token ends that sample right
    there, keeping the token (and its log-prob) and reporting "stop"."""
    prompts = long_prompts(1, lengths=(130,))
    free = SamplingParams(n=1, temperature=1.0, max_new_tokens=12, seed=5, stop_on_eos=False)
    sample = engine.generate(prompts, free)[0][0]
    assert sample.finish_reason == "length" and len(sample.token_ids) == 12
    cut = next(t for t in range(3, 12) if sample.token_ids[t] not in sample.token_ids[:t])
    stop = sample.token_ids[cut]
    stopped = engine.generate(prompts, SamplingParams(n=1, temperature=1.0, max_new_tokens=12, seed=5,
                                                      stop_on_eos=False, stop_token_ids=(stop,)))[0][0]
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == sample.token_ids[: cut + 1]
    torch.testing.assert_close(torch.tensor(stopped.logprobs), torch.tensor(sample.logprobs[: cut + 1]),
                               rtol=0, atol=TOL)


def check_top_k_logprobs(engine, model_path):
    """With top-k the sampled distribution is the softmax over the k best tokens: every token drawn is among
    them and its log-prob is log_softmax over just those k logits / T (not over the whole vocabulary)."""
    from transformers import AutoModelForCausalLM

    prompts = long_prompts(1)
    sample = engine.generate(prompts, SamplingParams(n=1, temperature=TEMPERATURE, top_k=5, max_new_tokens=8,
                                                     seed=1, stop_on_eos=False))[0][0]
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompts[0] + sample.token_ids])).logits[0, len(prompts[0]) - 1: -1]
    top = (logits / TEMPERATURE).topk(5, dim=-1)
    expected = []
    for t, tok in enumerate(sample.token_ids):
        kept = top.indices[t].tolist()
        assert tok in kept
        expected.append(torch.log_softmax(top.values[t], -1)[kept.index(tok)].item())
    torch.testing.assert_close(torch.tensor(sample.logprobs), torch.tensor(expected), rtol=0, atol=TOL)


def check_incomplete_update_fails(engine, start_path, new_path):
    """An update that leaves a weight out names it in the error; the engine then takes a full update."""
    import pytest

    from spro_mcore.rollout.engine import EngineError

    weights = hf_state_dict(new_path)
    del weights["model.norm.weight"]
    with pytest.raises(EngineError, match="model.norm.weight"):
        engine.update_weights(weights.items())
    engine.update_weights(hf_state_dict(start_path).items())


def check_delta_update(engine, start_path, new_path, mixed_dir, reference) -> None:
    """An engine with rollout.weight_sync_delta: the first sync sends everything; after a step that moved
    layer 1 only (what `new_path` has there, `start_path` elsewhere), only the tensors whose bytes changed are
    sent, and the engine's log-probs equal the HF reference of the full new state (and not the old one)."""
    import shutil

    from safetensors.torch import save_file

    start, new = hf_state_dict(start_path), hf_state_dict(new_path)
    mixed = {n: (new[n] if n.startswith("model.layers.1.") else t) for n, t in start.items()}
    shutil.copytree(start_path, mixed_dir)
    save_file(mixed, str(mixed_dir / "model.safetensors"), metadata={"format": "pt"})
    changed = {n for n, t in mixed.items() if not torch.equal(t, start[n])}
    # layer 1's norms are ones in both checkpoints: equal bytes, not sent
    assert changed and all(n.startswith("model.layers.1.") for n in changed)
    assert len(changed) < sum(n.startswith("model.layers.1.") for n in mixed)

    assert engine.update_weights(start.items()).tensors == len(start)  # the first sync is full
    stats = engine.update_weights(mixed.items())
    assert stats.tensors == len(changed)
    assert stats.bytes == sum(mixed[n].numel() * mixed[n].element_size() for n in changed)
    prompts = long_prompts()
    after = engine.generate(prompts, SamplingParams(n=2, temperature=TEMPERATURE, max_new_tokens=12, seed=7))
    assert max_logprob_gap(reference, mixed_dir, prompts, after, TEMPERATURE) <= TOL
    assert max_logprob_gap(reference, start_path, prompts, after, TEMPERATURE) > 0.5
