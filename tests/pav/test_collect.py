"""`spro-mcore pav collect` with the real hf engine on a tiny policy: Q-hat against the exact Q (every
continuation enumerated with its probability), the rows' bookkeeping, each pav.* field doing what it says,
resume after kill -9, and bad input."""
from __future__ import annotations

import hashlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from spro_mcore.cli import main as cli_main
from spro_mcore.config import load_config
from spro_mcore.pav import collect as collect_mod
from spro_mcore.pav.collect import collect
from tests.pav.tiny_vocab import non_a_chars, exact_q, make_policy, write_prompts

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
REWARD = "tests.pav.tiny_vocab:non_a_chars"


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    return make_policy(tmp_path_factory.mktemp("policy"))


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    return write_prompts(tmp_path_factory.mktemp("prompts") / "prompts.jsonl")


def overrides(policy, prompts, data_dir, **pav):
    base = dict(n_mc=8, num_prompts=4, prompts_per_batch=2, samples_per_prompt=2)
    base.update(pav)
    return [f"model.path={policy}", "data.source=file", f"data.train_path={prompts}", f"data.reward_fn={REWARD}",
            "data.chat_template=never", "rollout.max_new_tokens=4", "logging.level=WARNING",
            f"pav.data_dir={data_dir}"] + [f"pav.{k}={v}" for k, v in base.items()]


def rows_of(data_dir) -> list[dict]:
    return [r for p in sorted(Path(data_dir).glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


def wilson(k: float, n: int, z: float) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


ANSWERS = {0: "3", 1: "3", 2: "3", 3: "2"}  # the answers of write_prompts' prompts


def assert_q_hat_within_exact_q_interval(policy, rows, n_mc: int) -> None:
    """Every estimated prefix's exact Q (every continuation enumerated under HF) lies in the Wilson interval
    (z = 4) of its Q-hat; a final step (n_mc = 0) carries its own outcome; the prefixes really differ."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(policy, dtype="float32", attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(policy)
    exact_values = []
    for r in rows:
        if r["n_mc"] == 0:
            assert r["step"] == r["num_steps"] and r["q_hat"] == r["outcome"]
            assert r["outcome"] == non_a_chars(tok.decode(r["prefix_token_ids"], skip_special_tokens=True),
                                                ANSWERS[r["prompt_index"]])
            continue
        budget = 4 - len(r["prefix_token_ids"])
        q = exact_q(model, tok, r["prompt_token_ids"], r["prefix_token_ids"], budget, non_a_chars,
                    ANSWERS[r["prompt_index"]])
        lo, hi = wilson(r["q_hat"] * n_mc, n_mc, z=4.0)
        assert lo - 1e-9 <= q <= hi + 1e-9, (r, q)  # an exact Q of 1 sums to 1 + 1 ulp
        exact_values.append(q)
    assert len(exact_values) >= 10 and max(exact_values) - min(exact_values) > 0.3  # prefixes really differ


def record_engine_calls(monkeypatch) -> tuple[list, list]:
    """(calls, engines): every generate call of the engines collection builds, as (prompts, n, first seed),
    and the class name of each engine built."""
    calls, engines = [], []
    real_build = collect_mod.build_engine

    def counting_build(spec):
        engine = real_build(spec)
        engines.append(type(engine).__name__)
        real_generate = engine.generate

        def generate(prompt_ids, sampling):
            calls.append((len(prompt_ids), sampling.n, sampling.sample_seed(0)))
            return real_generate(prompt_ids, sampling)

        engine.generate = generate
        return engine

    monkeypatch.setattr(collect_mod, "build_engine", counting_build)
    return calls, engines


def test_q_hat_lies_in_the_binomial_interval_of_the_exact_q(policy, prompts, tmp_path, monkeypatch):
    calls, _ = record_engine_calls(monkeypatch)
    n_mc = 1000
    cfg = load_config(None, overrides(policy, prompts, tmp_path / "c", n_mc=n_mc, num_prompts=4, samples_per_prompt=3))
    stats = collect(cfg)
    # two engine calls per batch: the responses, then every prefix of the batch at once
    assert [n for _, n, _ in calls] == [3, n_mc, 3, n_mc]
    seeds = [s + k for prompts_in_call, n, s in calls for k in range(prompts_in_call * n)]
    assert len(set(seeds)) == len(seeds)  # sample j of prompt i: seed + i * n + j; no seed twice
    rows = rows_of(tmp_path / "c")
    assert calls[1][0] == sum(r["n_mc"] > 0 for r in rows if r["prompt_index"] < 2)

    assert_q_hat_within_exact_q_interval(policy, rows, n_mc)
    assert stats["continuation_tokens"] == sum(r["continuation_tokens"] for r in rows)
    assert stats["response_tokens"] == sum(r["response_tokens"] for r in rows if r["step"] == 0)
    assert stats["cost_ratio"] == pytest.approx(stats["continuation_tokens"] / stats["response_tokens"])


def test_rows_bookkeeping_and_fields(policy, prompts, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy)
    cfg = load_config(None, overrides(policy, prompts, tmp_path / "c", n_mc=5, num_prompts=3, prompts_per_batch=2,
                                      samples_per_prompt=2, prover="bok", prover_k=3))
    collect(cfg)
    rows = rows_of(tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").glob("part-*")) == ["part-00000.parquet", "part-00001.parquet"]
    assert sorted({(r["prompt_index"], r["sample_index"]) for r in rows}) == [(p, s) for p in range(3) for s in range(2)]
    for (p, s) in {(r["prompt_index"], r["sample_index"]) for r in rows}:
        mine = sorted((r for r in rows if (r["prompt_index"], r["sample_index"]) == (p, s)), key=lambda r: r["step"])
        assert [r["step"] for r in mine] == list(range(mine[0]["num_steps"] + 1))
        full = mine[-1]["prefix_token_ids"]
        for r in mine:
            assert full[:len(r["prefix_token_ids"])] == r["prefix_token_ids"]  # prefixes of one response
            assert r["n_mc"] in (0, 5) and r["q_hat"] * 5 == pytest.approx(round(r["q_hat"] * 5))
            assert r["q_prover"] == pytest.approx(1 - (1 - r["q_hat"]) ** 3)
        # every step but the last ends with a line break (splitter \n), the last holds the rest
        for r in mine[1:-1]:
            assert tok.decode(r["prefix_token_ids"]).endswith("\n")
        assert mine[0]["prefix_token_ids"] == []

    # prover=policy: the prover's Q is the policy's; a regex splitter changes where steps end
    cfg = load_config(None, overrides(policy, prompts, tmp_path / "d", n_mc=5, num_prompts=3, prompts_per_batch=2,
                                      samples_per_prompt=2, prover="policy", splitter="regex:b"))
    collect(cfg)
    rows = rows_of(tmp_path / "d")
    assert all(r["q_prover"] == r["q_hat"] for r in rows)
    for r in rows:
        if 0 < r["step"] < r["num_steps"]:
            assert tok.decode(r["prefix_token_ids"]).endswith("b")


def test_resume_after_kill_keeps_written_rows(policy, prompts, tmp_path):
    args = overrides(policy, prompts, tmp_path / "killed", n_mc=400, num_prompts=8, prompts_per_batch=1,
                     samples_per_prompt=2)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, "-m", "spro_mcore.cli", "pav", "collect", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = tmp_path / "killed" / "part-00000.parquet"
    deadline = time.monotonic() + 240
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists(), proc.stderr.read().decode()[-2000:]
    written = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "killed").glob("part-*.parquet")}
    assert 0 < len(written) < 8  # killed mid-collection

    collect(load_config(None, args))  # resume
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "killed").glob("part-*.parquet")}
    assert len(after) == 8 and all(after[name] == digest for name, digest in written.items())
    assert not list((tmp_path / "killed").glob("*.tmp"))

    collect(load_config(None, overrides(policy, prompts, tmp_path / "whole", n_mc=400, num_prompts=8,
                                        prompts_per_batch=1, samples_per_prompt=2)))
    assert rows_of(tmp_path / "killed") == rows_of(tmp_path / "whole")  # same rows as an uninterrupted run


def test_bad_input_one_line_and_nothing_lost(policy, prompts, tmp_path, capsys):
    base = overrides(policy, prompts, tmp_path / "c", n_mc=3, num_prompts=2, prompts_per_batch=2)
    assert cli_main(["pav", "collect", *base, "pav.n_mc=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pav.n_mc" in err
    assert not (tmp_path / "c").exists()

    assert cli_main(["pav", "collect", *base]) == 0
    shard = (tmp_path / "c" / "part-00000.parquet").read_bytes()
    manifest = (tmp_path / "c" / "manifest.json").read_text()
    capsys.readouterr()
    for bad, what in [("pav.n_mc=4", "n_mc"), ("pav.splitter=regex:b", "splitter"), ("trainer.seed=7", "seed")]:
        assert cli_main(["pav", "collect", *base, bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and what in err and "another pav.data_dir" in err
    assert (tmp_path / "c" / "part-00000.parquet").read_bytes() == shard
    assert (tmp_path / "c" / "manifest.json").read_text() == manifest

    assert cli_main(["pav", "collect", *base, "pav.splitter=regex:x*"]) == 2
    assert "pav.splitter" in capsys.readouterr().err
    assert cli_main(["pav", "collect", *overrides(policy, prompts, tmp_path / "e", num_prompts=99)]) == 2
    assert "99 prompts" in capsys.readouterr().err
