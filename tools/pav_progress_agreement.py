"""Mean |verifier progress - Monte-Carlo progress| per step on fresh rollouts of the policy (one process).

    python tools/pav_progress_agreement.py --config configs/pav_rl_cpu.yaml algo.pav_path=DIR [key=value ...]

Samples `data.prompts_per_step` x `rollout.n` responses with the rollout engine, splits them into the verifier's
steps, and computes both process inputs on the same batch: the trained verifier's Q^pi (one forward pass) and
Q-hat^pi from `algo.pav_n_mc` continuations per step prefix. Prints the mean |difference| of the progress under
the BoK(algo.pav_prover_k) prover over all steps (and of Q^pi itself), excluding and including the last step.
"""
from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from spro_mcore.algo.pav_advantages import pav_step_progress
    from spro_mcore.algo.progress import bok_q
    from spro_mcore.parallel import destroy
    from spro_mcore.pav.verifier import read_verifier_config
    from spro_mcore.trainer.loop import Trainer
    from spro_mcore.trainer.process_reward import MonteCarloProcessReward, VerifierProcessReward
    from spro_mcore.trainer.run import start
    from spro_mcore.trainer.setup import build_components

    overrides = [*args.overrides, "algo.estimator=pav", "algo.pav_source=verifier"]
    cfg, layout = start(args.config, overrides)
    try:
        splitter = read_verifier_config(cfg.algo.pav_path)["splitter"]
        cfg.algo.pav_splitter = splitter  # the MC estimate reads the same steps
        parts = build_components(cfg, layout)
        trainer = Trainer(cfg, layout, parts)
        prompts = parts.prompts.next_batch(layout)
        batch = trainer._produce(0, 0, prompts).batch  # the trainer's own rollout of step 0: sample, score, batch
        if isinstance(batch, Exception):
            raise batch
        ver, ver_cost = VerifierProcessReward(cfg, parts.tokenizer)(batch, prompts, 0)
        mc, mc_cost = MonteCarloProcessReward(cfg, layout, parts.tokenizer, parts.engine, parts.scorer)(batch, prompts, 0)
        k = cfg.algo.pav_prover_k
        n_steps = torch.tensor([int(ver["step_index"][i, :int(batch.response_lens[i])].max()) + 1 for i in range(len(batch))])
        s = ver["step_q"].shape[1]
        valid = torch.arange(s)[None, :] < n_steps[:, None]
        not_last = torch.arange(s)[None, :] < (n_steps - 1)[:, None]
        pv = pav_step_progress(ver["step_q"].double(), ver["prompt_value"].double(), prover_k=k)
        pm = pav_step_progress(mc["step_q"].double(), mc["prompt_value"].double(), prover_k=k)
        diff = (pv - pm).abs()
        qdiff = (bok_q(ver["step_q"].double(), 1) - mc["step_q"].double()).abs()
        out = {
            "responses": len(batch), "steps": int(valid.sum()), "n_mc": cfg.algo.pav_n_mc, "prover_k": k,
            "mean_abs_progress_diff_all_steps": float(diff[valid].mean()),
            "mean_abs_progress_diff_before_last_step": float(diff[not_last].mean()) if not_last.any() else None,
            "mean_abs_q_diff_before_last_step": float(qdiff[not_last].mean()) if not_last.any() else None,
            "mean_abs_progress_verifier": float(pv[valid].abs().mean()),
            "mean_abs_progress_mc": float(pm[valid].abs().mean()),
            "mean_abs_prompt_value_diff": float((ver["prompt_value"] - mc["prompt_value"]).abs().mean()),
            **ver_cost, **{k2: v for k2, v in mc_cost.items() if v},
        }
        print(json.dumps(out, indent=2))
    finally:
        destroy()


if __name__ == "__main__":
    main()
