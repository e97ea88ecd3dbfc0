"""Verifier-guided beam search with the real hf engine on the tiny-vocabulary policy: N = 1, C = 1 is plain
sampling (same tokens, same seed); the ranking follows the verifier; the report's format; bad input."""
from __future__ import annotations

import json

import pytest
import torch

from spro_mcore.algo.step_split import splitter_pattern
from spro_mcore.cli import main as cli_main
from spro_mcore.pav.beam_search import beam_search, line_break_token_ids
from spro_mcore.rollout.engine import SamplingParams
from tests.multiproc import run_in_processes
from tests.pav.tiny_vocab import make_policy

pytestmark = pytest.mark.dist

PROMPTS = [[1, 3], [2, 3], [1, 2, 3], [2, 3, 2, 3]]  # "a\n", "b\n", "ab\n", "b\nb\n"


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return make_policy(tmp_path_factory.mktemp("policy"))


def _plain_vs_search(policy):
    from transformers import AutoTokenizer

    from spro_mcore.parallel import initialize_model_parallel
    from spro_mcore.pav.search_cmd import make_verifier_q
    from spro_mcore.pav.verifier import build_verifier
    from spro_mcore.rollout.hf_engine import HfEngine

    initialize_model_parallel(1, 1)
    chunks, _, _ = build_verifier(str(policy), seed=3)  # a real (untrained) verifier: with N = C = 1 nothing is ranked
    tok = AutoTokenizer.from_pretrained(policy)
    engine = HfEngine(str(policy))
    plain = engine.generate(PROMPTS, SamplingParams(n=1, max_new_tokens=6, seed=11))
    found = beam_search(engine, tok, make_verifier_q(chunks), PROMPTS, beam_width=1, candidates=1, alpha=0.5,
                        prover="bok", prover_k=4, max_new_tokens=6, temperature=1.0, splitter=splitter_pattern("\n"),
                        seed=11, step_stop_ids=line_break_token_ids(tok))
    return [g[0].token_ids for g in plain], [(r.tokens, r.generated_tokens) for r in found]


def test_one_beam_one_candidate_is_plain_sampling(policy):
    plain, found = run_in_processes(_plain_vs_search, 1, str(policy), timeout=300)[0]
    assert [t for t, _ in found] == plain
    assert [n for _, n in found] == [len(t) for t in plain]
    assert any(3 in t[:-1] for t in plain)  # responses of several steps: the search really went step by step


def test_ranking_follows_the_verifier(policy):
    from transformers import AutoTokenizer

    from spro_mcore.rollout.hf_engine import HfEngine

    tok = AutoTokenizer.from_pretrained(policy)
    engine = HfEngine(str(policy))
    prompts = PROMPTS * 4

    def b_share(seqs, reads):  # a verifier that likes the letter b (any callable with this signature serves)
        out = []
        for s, r in zip(seqs, reads):
            out.append([(1 + s[:p + 1].count(2)) / (2 + p) for p in r])
        return out

    def run(n, c, q):
        return beam_search(engine, tok, q, prompts, beam_width=n, candidates=c, alpha=0.0, prover="policy",
                           prover_k=1, max_new_tokens=6, temperature=1.0, splitter=splitter_pattern("\n"), seed=5,
                           step_stop_ids=line_break_token_ids(tok))

    def mean_b(results):
        return sum(r.tokens.count(2) for r in results) / len(results)

    plain = run(1, 1, b_share)
    liked = run(3, 3, b_share)
    disliked = run(3, 3, lambda s, r: [[1 - v for v in row] for row in b_share(s, r)])
    assert mean_b(liked) > mean_b(plain) + 0.3 and mean_b(disliked) < mean_b(plain) - 0.3
    assert sum(r.generated_tokens for r in liked) > sum(r.generated_tokens for r in plain)


def test_no_two_sampled_rows_share_a_seed(policy):
    """Every row a search samples (full rollouts and fresh candidates, over all rounds) has its own seed: a
    reused seed replays the same random draws on another prefix (the bug `pav collect` had)."""
    from transformers import AutoTokenizer

    from spro_mcore.rollout.hf_engine import HfEngine

    tok = AutoTokenizer.from_pretrained(policy)
    engine = HfEngine(str(policy))
    seeds, real_generate = [], engine.generate

    def generate(prompt_ids, sampling):
        seeds.extend(sampling.sample_seed(i) + j for i in range(len(prompt_ids)) for j in range(sampling.n))
        return real_generate(prompt_ids, sampling)

    engine.generate = generate

    def arbitrary(seqs, reads):  # scores that pick fresh candidates too, so later rounds sample full rollouts again
        return [[(hash(tuple(q[:p + 1])) % 97) / 97 for p in r] for q, r in zip(seqs, reads)]

    beam_search(engine, tok, arbitrary, PROMPTS, beam_width=2, candidates=3,
                alpha=0.0, prover="policy", prover_k=1, max_new_tokens=6, temperature=1.0,
                splitter=splitter_pattern("\n"), seed=5, step_stop_ids=line_break_token_ids(tok))
    assert len(seeds) > 3 * len(PROMPTS) * 2  # several rounds ran
    assert len(set(seeds)) == len(seeds)


def test_report_format(tmp_path):
    from spro_mcore.pav.search_cmd import write_report

    rows = [{"method": "pav_beam_search", "accuracy": 0.5, "generated_tokens": 100},
            {"method": "best_of_n", "n": 1, "accuracy": 0.25, "generated_tokens": 30},
            {"method": "majority_vote", "n": 1, "accuracy": 0.25, "generated_tokens": 30}]
    write_report(rows, tmp_path / "out")
    got = json.loads((tmp_path / "out" / "results.json").read_text())
    assert got == rows and all({"method", "accuracy", "generated_tokens"} <= set(r) for r in got)
    assert (tmp_path / "out" / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_input(policy, tmp_path, capsys):
    assert cli_main(["search", f"pav.verifier_dir={policy}", f"search.output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a PAV verifier" in err
    assert cli_main(["search", "search.candidates=0"]) == 2
    assert "search.candidates" in capsys.readouterr().err


def _export_untrained(policy, out):
    from spro_mcore.parallel import initialize_model_parallel
    from spro_mcore.pav.dataset import policy_fingerprint
    from spro_mcore.pav.verifier import build_verifier, export_verifier

    initialize_model_parallel(1, 1)
    chunks, arch, _ = build_verifier(policy, seed=3)
    export_verifier(chunks, arch, policy, out, {"base_policy": policy, "base_policy_fingerprint":
                                                policy_fingerprint(policy), "splitter": "\\n"}, write=True)


def _search_cli(args):
    return cli_main(["search", *args])


def test_search_command_writes_the_comparison(policy, tmp_path):
    from tests.pav.test_collect import REWARD
    from tests.pav.tiny_vocab import write_prompts

    run_in_processes(_export_untrained, 1, str(policy), str(tmp_path / "verifier"), timeout=300)
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    args = [f"model.path={policy}", "data.source=file", f"data.train_path={prompts}", f"data.eval_path={prompts}",
            f"data.reward_fn={REWARD}", "data.chat_template=never", "rollout.max_new_tokens=5",
            f"pav.verifier_dir={tmp_path / 'verifier'}", "search.beam_width=2", "search.candidates=2",
            "search.num_prompts=6", f"search.output_dir={tmp_path / 'out'}", "logging.level=WARNING"]
    assert run_in_processes(_search_cli, 1, args, timeout=300)[0] == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    beam = [r for r in rows if r["method"] == "pav_beam_search"]
    best = [r for r in rows if r["method"] == "best_of_n"]
    assert len(beam) == 1 and beam[0]["beam_width"] == 2 and beam[0]["candidates"] == 2
    assert [r["n"] for r in best] == [2 ** i for i in range(len(best))]
    assert best[-1]["generated_tokens"] >= beam[0]["generated_tokens"] > best[0]["generated_tokens"]
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    assert (tmp_path / "out" / "results.png").is_file()
