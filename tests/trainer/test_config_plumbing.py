"""Config fields that reach a component and change what it does, checked against independent references:
the optimizer and LR schedule (textbook warm-up/decay formulas; gradient clipping measured on the update),
mini-batches x PPO epochs (optimizer steps per RL step), the separate reference model, the sampling and
evaluation parameters the engine receives, the collective timeout and the log level set at start-up."""

from __future__ import annotations

import math

import pytest
import torch

from tests.multiproc import run_in_processes

pytestmark = pytest.mark.dist


def _batch(vocab: int, rows: int = 4, seed: int = 3):
    from spro_mcore.trainer.rollout_batch import RolloutBatch

    g = torch.Generator().manual_seed(seed)
    L, T = 20, 12
    response_lens = torch.tensor([12, 7, 9, 4][:rows])
    batch = RolloutBatch(
        input_ids=torch.randint(2, vocab, (rows, L), generator=g), prompt_lens=torch.tensor([6, 3, 8, 2][:rows]),
        response_lens=response_lens, response_mask=torch.arange(T)[None] < response_lens[:, None],
        engine_logprobs=torch.zeros(rows, T), rewards=torch.zeros(rows), group_ids=torch.zeros(rows, dtype=torch.long))
    return batch, torch.randn(rows, T, generator=g) * batch.response_mask


def _actor(overrides: list[str], total_updates: int = 1):
    """The actor as `trainer.setup` builds it: model.path / model.reference_path resolved the same way."""
    from spro_mcore.config import load_config
    from spro_mcore.parallel.distributed import layout
    from spro_mcore.trainer.policy.megatron_policy import MegatronPolicy
    from spro_mcore.trainer.setup import resolve_model_path

    cfg = load_config(None, ["model.transformer_impl=local", *overrides])
    path = resolve_model_path(cfg.model.path)
    reference = resolve_model_path(cfg.model.reference_path) if cfg.model.reference_path else path
    return MegatronPolicy(cfg, layout(), path, reference, total_updates=total_updates)


def _perturbed_copy(out: str) -> str:
    """The shipped tiny base with every weight moved a little: another model of the same architecture."""
    import shutil

    from safetensors.torch import load_file, save_file

    from spro_mcore.assets import TINY_BASE_DIR

    shutil.copytree(TINY_BASE_DIR, out)
    g = torch.Generator().manual_seed(11)
    weights = load_file(f"{out}/model.safetensors")
    save_file({k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in weights.items()},
              f"{out}/model.safetensors", metadata={"format": "pt"})
    return out


def _update(actor):
    """One RL-step update on a fixed batch; returns the max |weight change| and the step's metrics."""
    batch, adv = _batch(actor.arch.vocab_size)
    before = [p.detach().clone() for p in actor._params()]
    old, _ = actor.logprobs(batch)
    ref, _ = actor.logprobs(batch, reference=True)
    metrics = actor.update(batch, adv, old, ref)
    change = max((p.detach() - b).abs().max().item() for p, b in zip(actor._params(), before))
    return change, metrics


def _optimizer_kinds(optimizer) -> set[str]:
    return {type(o).__name__ for o in getattr(optimizer, "chained_optimizers", [optimizer])}


def _optimizer_worker(tmp: str):
    from spro_mcore.parallel import initialize_model_parallel, seed_everything

    initialize_model_parallel()
    seed_everything(0)
    out = {}
    # the LR schedule over 10 updates, read after each scheduler step (as the actor steps it)
    for style in ("linear", "cosine"):
        actor = _actor([f"optim.lr_schedule={style}", "optim.lr=1e-3", "optim.min_lr=1e-4", "optim.warmup_steps=3",
                        "optim.weight_decay=0.05", "optim.adam_beta1=0.8", "optim.adam_beta2=0.95",
                        "optim.adam_eps=1e-7"], total_updates=10)
        lrs = [actor.optimizer.param_groups[0]["lr"]]
        for _ in range(12):
            actor.scheduler.step(increment=1)
            lrs.append(actor.optimizer.param_groups[0]["lr"])
        out[style] = lrs
        groups = actor.optimizer.param_groups
        out["groups"] = [(g["betas"], g["eps"], g["weight_decay"], sum(p.numel() for p in g["params"])) for g in groups]
        out["distributed"] = _optimizer_kinds(actor.optimizer)
    out["not_distributed"] = _optimizer_kinds(_actor(["optim.use_distributed_optimizer=false"]).optimizer)
    # clipping: with a large Adam epsilon the first update is ~ lr * g / eps, so clipping the gradient to a
    # quarter of its norm makes the update a quarter as large
    plain = _update(_actor(["optim.lr=1.0", "optim.adam_eps=1e3", "optim.clip_grad=0"]))
    clip = plain[1]["train/grad_norm"] / 4
    clipped = _update(_actor(["optim.lr=1.0", "optim.adam_eps=1e3", f"optim.clip_grad={clip}"]))
    out["clip"] = (plain[0], clipped[0], plain[1]["train/grad_norm"], clipped[1]["train/grad_norm"])
    # mini-batches x epochs = optimizer steps per RL step
    actor = _actor(["trainer.mini_batches=2", "trainer.ppo_epochs=3", "optim.lr=1e-3"], total_updates=6)
    _update(actor)
    out["steps"] = actor.scheduler.num_steps
    # the reference: unchanged by the update, the same in both modes; `separate` holds a second model
    refs = {}
    for mode in ("swap", "separate"):
        actor = _actor([f"model.reference_mode={mode}", "optim.lr=1e-2"])
        batch, _ = _batch(actor.arch.vocab_size)
        before, _ = actor.logprobs(batch, reference=True)
        policy_before, _ = actor.logprobs(batch)
        _update(actor)
        after, _ = actor.logprobs(batch, reference=True)
        policy_after, _ = actor.logprobs(batch)
        refs[mode] = (before, after, (policy_after - policy_before).abs().max().item(), actor._ref_chunks is not None)
    out["refs"] = refs
    # model.reference_path: the reference is that model, in both modes, while the policy starts from model.path
    other = _perturbed_copy(f"{tmp}/other")
    batch, _ = _batch(384)
    out["other_policy"] = _actor([f"model.path={other}"]).logprobs(batch)[0]
    out["base_policy"] = _actor([]).logprobs(batch)[0]
    out["refs_from_path"] = {}
    for mode in ("swap", "separate"):
        actor = _actor([f"model.reference_mode={mode}", f"model.reference_path={other}"])
        out["refs_from_path"][mode] = (actor.logprobs(batch, reference=True)[0], actor.logprobs(batch)[0])
    return out


@pytest.fixture(scope="module")
def optim_results(tmp_path_factory):
    return run_in_processes(_optimizer_worker, 1, str(tmp_path_factory.mktemp("plumbing")), timeout=300)[0]


def _textbook_lr(step: int, style: str, lr=1e-3, min_lr=1e-4, warmup=3, total=10) -> float:
    if step <= warmup:
        return lr * step / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / (total - warmup)
    shape = 1 - progress if style == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return min_lr + (lr - min_lr) * shape


@pytest.mark.parametrize("style", ["linear", "cosine"])
def test_lr_schedule_warmup_and_floor(optim_results, style):
    got = optim_results[style]
    want = [_textbook_lr(s, style) for s in range(len(got))]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_adam_hyperparameters_and_weight_decay_reach_the_optimizer(optim_results):
    groups = optim_results["groups"]
    assert all(tuple(b) == (0.8, 0.95) and eps == 1e-7 for b, eps, _, _ in groups)
    decays = {wd: n for _, _, wd, n in groups}
    # matrices decay, norms (and biases) do not: megatron's usual split
    assert set(decays) == {0.05, 0.0} and decays[0.05] > decays[0.0] > 0


def test_distributed_optimizer_switch(optim_results):
    assert optim_results["distributed"] == {"DistributedOptimizer"}
    assert "DistributedOptimizer" not in optim_results["not_distributed"]


def test_clip_grad_scales_the_update(optim_results):
    plain_change, clipped_change, plain_norm, clipped_norm = optim_results["clip"]
    assert plain_norm == pytest.approx(clipped_norm, rel=1e-6) and plain_norm > 1e-2  # norm before clipping
    assert clipped_change / plain_change == pytest.approx(0.25, rel=0.02)


def test_mini_batches_times_epochs_optimizer_steps(optim_results):
    assert optim_results["steps"] == 6


def test_reference_is_frozen_in_both_modes(optim_results):
    refs = optim_results["refs"]
    for mode, (before, after, policy_moved, has_second_model) in refs.items():
        assert policy_moved > 1e-4, mode  # the update changed the policy ...
        torch.testing.assert_close(after, before, rtol=0, atol=0, msg=mode)  # ... and not the reference
        assert has_second_model == (mode == "separate")
    torch.testing.assert_close(refs["separate"][0], refs["swap"][0], rtol=0, atol=1e-6)


def test_reference_path_is_the_reference_model(optim_results):
    other, base = optim_results["other_policy"], optim_results["base_policy"]
    assert (other - base).abs().max() > 1e-3  # the two models differ
    for mode, (ref, policy) in optim_results["refs_from_path"].items():
        torch.testing.assert_close(ref, other, rtol=0, atol=1e-6, msg=mode)
        torch.testing.assert_close(policy, base, rtol=0, atol=1e-6, msg=mode)


def _start_worker(checkpoint_dir: str):
    import logging

    from spro_mcore.trainer.run import start

    from spro_mcore.trainer.checkpoint import Checkpointer

    cfg, layout = start(None, ["logging.level=WARNING", "parallel.timeout_minutes=7",
                                f"checkpoint.dir={checkpoint_dir}", "trainer.output_dir=/nonexistent/run"])
    import torch.distributed as dist

    timeout = dist.group.WORLD._get_backend(torch.device("cpu")).options._timeout
    return logging.getLogger().level, timeout.total_seconds(), str(Checkpointer(cfg, layout).dir)


def test_start_sets_log_level_collective_timeout_and_checkpoint_dir(tmp_path):
    import logging

    level, timeout_s, ckpt_dir = run_in_processes(_start_worker, 1, str(tmp_path / "ckpts"))[0]
    assert level == logging.WARNING and timeout_s == 7 * 60
    assert ckpt_dir == str(tmp_path / "ckpts")


@pytest.mark.parametrize("on", [True, False])
def test_tensorboard_and_progress_bar_switches(tmp_path, on):
    from spro_mcore.trainer.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path, total_steps=2, tensorboard=on, progress_bar=on)
    logger.log(1, {"reward/mean": 0.5})
    logger.close()
    assert (tmp_path / "metrics.jsonl").is_file()
    assert any((tmp_path / "tb").glob("events.*")) == on
    assert (logger._progress is not None) == on


class RecordingEngine:
    """The real hf engine, recording the sampling parameters it is asked for."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def generate(self, prompt_token_ids, sampling):
        self.calls.append(sampling)
        return self.engine.generate(prompt_token_ids, sampling)


def test_sampling_and_eval_parameters_reach_the_engine(tmp_path):
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from spro_mcore.assets import TINY_BASE_DIR
    from spro_mcore.config import load_config
    from spro_mcore.parallel.distributed import Layout
    from spro_mcore.rollout.engine import EngineSpec, build_engine
    from spro_mcore.trainer.group_scorer import GroupScorer
    from spro_mcore.trainer.loop import Trainer
    from spro_mcore.trainer.prompts import build_prompt_sources

    cfg = load_config(None, ["rollout.n=3", "rollout.temperature=0.9", "rollout.top_p=0.8", "rollout.top_k=20",
                             "rollout.max_new_tokens=6", "trainer.eval_n=2", "trainer.eval_temperature=0.7",
                             "data.synthetic_eval_size=2", "data.synthetic_train_size=4", "data.prompts_per_step=2",
                             f"trainer.output_dir={tmp_path}"])
    layout = Layout(rank=0, world_size=1, local_rank=0, tp=1, pp=1, dp=1, cp=1, tp_rank=0, pp_rank=0, dp_rank=0)
    tokenizer = AutoTokenizer.from_pretrained(TINY_BASE_DIR)
    _, eval_prompts = build_prompt_sources(cfg, tokenizer, layout)
    engine = RecordingEngine(build_engine(EngineSpec.from_rollout_config(cfg.rollout, str(TINY_BASE_DIR), seed=0,
                                                                         max_model_len=256)))
    parts = SimpleNamespace(policy=None, engine=engine, start_step=0, eval_prompts=eval_prompts, tokenizer=tokenizer,
                            scorer=GroupScorer(cfg.data.reward_fn, timeout_s=cfg.data.reward_timeout_s))
    trainer = Trainer(cfg, layout, parts)
    s = trainer.sampling(0)
    assert (s.n, s.temperature, s.top_p, s.top_k, s.max_new_tokens) == (3, 0.9, 0.8, 20, 6)
    metrics = trainer.evaluate()
    greedy, sampled = engine.calls
    assert (greedy.n, greedy.top_k, greedy.max_new_tokens) == (1, 1, 6)
    assert (sampled.n, sampled.temperature, sampled.max_new_tokens) == (2, 0.7, 6)
    assert "eval/pass@2" in metrics


def test_wandb_project_without_wandb_is_one_clear_error(tmp_path):
    import importlib.util

    from spro_mcore.errors import UserError
    from spro_mcore.trainer.metrics import MetricsLogger

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(UserError, match="logging.wandb_project is set but wandb is not installed"):
        MetricsLogger(tmp_path, total_steps=1, wandb_project="p", progress_bar=False, tensorboard=False)
