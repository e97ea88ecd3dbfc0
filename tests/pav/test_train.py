"""`spro-mcore pav train` on a collection of the tiny-vocabulary policy: the loss decreases, the LR follows
warm-up + cosine, held-out metrics are written, the exported verifier reloads to the same predictions and
matches HF transformers' hidden states through the head; bad input is refused with one line."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from spro_mcore.cli import main as cli_main
from spro_mcore.config import load_config
from spro_mcore.errors import UserError
from spro_mcore.pav.collect import collect
from tests.multiproc import run_in_processes
from tests.pav.cli_run import metric_rows, pav_train
from tests.pav.test_collect import overrides
from tests.pav.tiny_vocab import make_policy, write_prompts

pytestmark = pytest.mark.dist


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pavtrain")
    policy = make_policy(root / "policy")
    prompts = write_prompts(root / "prompts.jsonl")
    base = overrides(policy, prompts, root / "data", n_mc=16, num_prompts=8, prompts_per_batch=4,
                     samples_per_prompt=4)
    collect(load_config(None, base))
    train = base + [f"pav.verifier_dir={root / 'verifier'}", "pav.train_steps=40", "pav.batch_size=8",
                    "pav.eval_interval=20", "pav.heldout_fraction=0.25", "optim.lr=0.003", "optim.warmup_steps=5",
                    "optim.lr_schedule=cosine", "optim.min_lr=0.0001"]
    return root, policy, base, train


def _reload(overrides):
    from spro_mcore.parallel import initialize_model_parallel
    from spro_mcore.pav.batches import make_batch
    from spro_mcore.pav.metrics import verifier_metrics
    from spro_mcore.pav.train import load_training_data
    from spro_mcore.pav.verifier import load_verifier, predict_logits

    initialize_model_parallel(1, 1)
    cfg = load_config(None, overrides)
    _, _, train, heldout = load_training_data(cfg)
    chunks, _, info = load_verifier(cfg.pav.verifier_dir)
    length = max(len(r.input_ids) for r in train + heldout)
    steps = max(len(r.read_pos) for r in train + heldout)
    batch = make_batch(heldout, length=length, steps=steps)
    logits = predict_logits(chunks, batch, micro_batch_size=3)
    return {"metrics": verifier_metrics(logits, batch["targets"], batch["outcome"], batch["read_mask"]),
            "logits": logits, "batch": batch, "info": info}


@pytest.fixture(scope="module")
def trained(setup):
    root, policy, base, train = setup
    pav_train(train)
    rows = metric_rows(root / "verifier")
    return rows[-1], rows


def test_loss_decreases_and_lr_follows_warmup_cosine(trained):
    last, rows = trained
    assert len(rows) == 40 and rows[-1]["step"] == 40
    losses = [r["train/loss"] for r in rows]
    assert sum(losses[-10:]) / 10 < 0.9 * sum(losses[:10]) / 10
    lrs = [r["train/lr"] for r in rows]  # after step s: warm-up s/5 of the peak, then cosine to min_lr
    assert lrs[0] == pytest.approx(0.003 / 5) and lrs[4] == pytest.approx(0.003)
    s = 20
    expected = 0.0001 + (0.003 - 0.0001) * 0.5 * (1 + math.cos(math.pi * (s - 5) / 35))
    assert lrs[s - 1] == pytest.approx(expected, rel=1e-4) and lrs[-1] == pytest.approx(0.0001)
    evals = [r for r in rows if "eval/bce" in r]
    assert [r["step"] for r in evals] == [20, 40]
    assert all(0 <= r["eval/brier"] <= 1 and r["eval/prefixes"] > 0 for r in evals)


def test_export_reloads_to_the_same_predictions_and_matches_hf(setup, trained):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    root, _, _, train = setup
    last, _ = trained
    out = run_in_processes(_reload, 1, train, timeout=300)[0]
    for k in ("eval/bce", "eval/brier"):
        assert out["metrics"][k] == pytest.approx(last[k], abs=1e-6)
    assert out["info"]["splitter"] == "\\n" and out["info"]["head"] == "value"
    # independent reference: HF transformers' final hidden states (after the final norm) through the head
    vdir = root / "verifier"
    hf = AutoModelForCausalLM.from_pretrained(vdir, dtype=torch.float32, attn_implementation="eager").eval()
    head = load_file(str(vdir / "value_head.safetensors"))
    batch = out["batch"]
    with torch.no_grad():
        hidden = hf(batch["input_ids"], output_hidden_states=True).hidden_states[-1]
    rows = torch.arange(hidden.shape[0])[:, None].expand_as(batch["read_pos"])
    ref = hidden[rows, batch["read_pos"]] @ head["value_head.weight"][0] + head["value_head.bias"][0]
    mask = batch["read_mask"]
    torch.testing.assert_close(out["logits"][mask], ref[mask], atol=1e-4, rtol=1e-4)


def test_bad_input(setup, tmp_path, capsys):
    from spro_mcore.pav.verifier import load_verifier

    root, policy, base, train = setup

    def refused(*extra, what):
        assert cli_main(["pav", "train", *train, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and what in err, err

    refused(f"pav.data_dir={tmp_path / 'nothing'}", what="no PAV collection")
    refused("model.path=builtin:tiny_base", what="collected with the policy")
    refused("pav.splitter=regex:b", what="pav.splitter")
    refused("pav.heldout_fraction=0", what="pav.heldout_fraction")
    with pytest.raises(UserError, match="not a PAV verifier"):
        load_verifier(str(policy))  # an HF policy directory: no value head


def _score_cli(args):
    return cli_main(["pav", "score", *args])


def test_score_gives_the_verifiers_per_step_predictions(setup, trained, tmp_path):
    from transformers import AutoTokenizer

    from spro_mcore.pav.train import load_training_data

    root, policy, _, train = setup
    out = run_in_processes(_reload, 1, train, timeout=300)[0]
    _, _, _, heldout = load_training_data(load_config(None, train))
    tok = AutoTokenizer.from_pretrained(policy)
    rows = []
    for r in heldout:
        prompt_len = r.read_pos[0] + 1
        rows.append({"prompt": tok.decode(r.input_ids[:prompt_len]),
                     "response": tok.decode(r.input_ids[prompt_len:], skip_special_tokens=True)})
    src = tmp_path / "responses.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in rows))
    assert run_in_processes(_score_cli, 1, train + [f"pav.score_input={src}"], timeout=300)[0] == 0
    scored = [json.loads(line) for line in (tmp_path / "responses.scores.jsonl").read_text().splitlines()]
    assert len(scored) == len(heldout)
    q_ref = torch.sigmoid(out["logits"]).double()
    for i, (s, r) in enumerate(zip(scored, heldout)):
        if r.input_ids[-1] == tok.eos_token_id:  # the text form drops EOS: its last read moves one token back
            continue
        n = len(r.read_pos)
        assert len(s["q"]) == n and len(s["steps"]) == n - 1
        torch.testing.assert_close(torch.tensor(s["q"], dtype=torch.float64), q_ref[i, :n], atol=1e-5, rtol=1e-5)
        q_mu = 1 - (1 - torch.tensor(s["q"], dtype=torch.float64)) ** 4
        torch.testing.assert_close(torch.tensor(s["progress"], dtype=torch.float64), q_mu[1:] - q_mu[:-1])
    assert any(r.input_ids[-1] != tok.eos_token_id for r in heldout)


@pytest.mark.parametrize("tp,pp", [(1, 1), (1, 2)])  # 2 processes: DP=2, and PP=2
def test_parallel_training_equals_one_process(setup, tp, pp):
    root, _, _, train = setup
    short = [a for a in train if not a.startswith(("pav.train_steps", "pav.eval_interval", "pav.verifier_dir"))] + [
        "pav.train_steps=4", "pav.eval_interval=2"]
    if not (root / "ref" / "pav_verifier.json").exists():  # shared by both layouts
        pav_train(short + [f"pav.verifier_dir={root / 'ref'}"])
    pav_train(short + [f"pav.verifier_dir={root / f'par{tp}{pp}'}", f"parallel.tp={tp}", f"parallel.pp={pp}"], nproc=2)
    rows = lambda d: metric_rows(root / d)
    for a, b in zip(rows("ref"), rows(f"par{tp}{pp}")):
        for k in ("train/loss", "eval/bce", "eval/brier"):
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (k, a["step"])
    assert len(rows(f"par{tp}{pp}")) == 4
    assert rows(f"par{tp}{pp}")[-1]["eval/bce"] == pytest.approx(rows("ref")[-1]["eval/bce"], rel=1e-4)
