"""Verifier-guided beam search over reasoning steps (shared/spec/PAV.md, "Test-time beam search").

Per prompt: N beam elements, each proposes C next steps sampled from the policy; every candidate is ranked by
Q^pi(s_h, a_h) + alpha * A^mu(s_h, a_h) (the verifier's Q of the new state, and the prover's progress, the
prover's Q following from the BoK formula); the best N survive. A candidate that ends the response (EOS or
the length limit) leaves the beam for the finished pool; the answer is the finished response with the
highest verifier Q (the best unfinished one if none finished).

How candidates are sampled: candidate 0 of each beam element continues the rollout it came from (a full
response is sampled once and its steps are used one at a time), candidates 1..C-1 are fresh samples cut at
the end of their first step (generation stops at line-break tokens when the splitter is line based). So with
N = 1 and C = 1 the search is exactly plain sampling: one full response per prompt, same seed, same tokens.
Every token the engine returns counts as generated, including what a cut drops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from spro_mcore.algo.progress import beam_score, bok_q
from spro_mcore.algo.token_offsets import split_token_steps
from spro_mcore.rollout.engine import SamplingParams



@dataclass
class Beam:
    tokens: list[int]  # response tokens so far (whole steps)
    q: float  # the verifier's Q^pi of this state
    rest: list[int] = field(default_factory=list)  # the rest of the rollout this beam came from (candidate 0)
    rest_finished: bool = False  # that rollout ended (EOS / limit) at its last token
    finished: bool = False


@dataclass
class SearchResult:
    tokens: list[int]  # the chosen response
    q: float  # its verifier Q
    generated_tokens: int  # everything the engine generated for this prompt


def line_break_token_ids(tokenizer) -> list[int]:
    """Ids of every token whose text contains a line break (to stop a sample at the end of a line)."""
    ids = []
    for i in range(len(tokenizer)):
        if "\n" in tokenizer.decode([i]):
            ids.append(i)
    return ids


def first_step(beam_tokens: list[int], continuation: list[int], tokenizer, splitter) -> int:
    """How many tokens of `continuation` complete the first step after `beam_tokens` (all of it if no step
    ends inside it)."""
    if not continuation:
        return 0
    split = split_token_steps(beam_tokens + continuation, tokenizer, splitter)
    h = split.step_of_token[len(beam_tokens)]
    return split.spans[h][1] - len(beam_tokens)


def beam_search(engine, tokenizer, verifier_q: Callable, prompts: list[list[int]], *, beam_width: int,
                candidates: int, alpha: float, prover: str, prover_k: int, max_new_tokens: int, temperature: float,
                splitter, seed: int, step_stop_ids: Optional[list[int]] = None) -> list[SearchResult]:
    """`verifier_q(sequences, read_positions) -> Q per read position` scores states (prompt + response tokens)."""
    eos = set(getattr(engine, "eos_token_ids", []) or [tokenizer.eos_token_id])

    def mu(q: float) -> float:
        return bok_q(q, prover_k) if prover == "bok" else q

    roots = verifier_q([list(p) for p in prompts], [[len(p) - 1] for p in prompts])
    beams = [[Beam([], roots[i][0]) for _ in range(beam_width)] for i in range(len(prompts))]
    done: list[list[Beam]] = [[] for _ in prompts]
    generated = [0] * len(prompts)
    n_round = 0
    # round r owns the seeds [seed + r*P*C, seed + (r+1)*P*C), P = prompts x N: its full rollouts the first P,
    # its fresh candidates the next P*(C-1), so no two sampled rows of a search share a seed (round 0's full
    # rollouts start at `seed`: N = C = 1 is plain sampling)
    block = len(prompts) * beam_width
    while any(beams):
        round_seed = seed + n_round * block * candidates
        # candidate 0: the next step of each element's own rollout (sampled in full when there is none)
        need_full = [(i, j) for i, bs in enumerate(beams) for j, b in enumerate(bs) if not b.rest]
        if need_full:
            budget = max(max_new_tokens - len(beams[i][j].tokens) for i, j in need_full)
            groups = engine.generate([prompts[i] + beams[i][j].tokens for i, j in need_full], SamplingParams(
                n=1, temperature=temperature, max_new_tokens=budget,
                seed=round_seed))
            for (i, j), g in zip(need_full, groups):
                b = beams[i][j]
                room = max_new_tokens - len(b.tokens)
                b.rest = g[0].token_ids[:room]
                b.rest_finished = g[0].finish_reason == "stop" or len(b.rest) == room or len(g[0].token_ids) > room
                generated[i] += len(b.rest)
        proposals: list[tuple[int, Beam, list[int], bool, list[int], bool]] = []  # prompt, parent, step, done, rest
        for i, bs in enumerate(beams):
            for b in bs:
                cut = first_step(b.tokens, b.rest, tokenizer, splitter)
                rest = b.rest[cut:]
                finished = not rest and b.rest_finished
                proposals.append((i, b, b.rest[:cut], finished, rest, b.rest_finished))
        # candidates 1..C-1: fresh samples of one step
        if candidates > 1:
            parents = [(i, b) for i, bs in enumerate(beams) for b in bs]
            budget = max(max_new_tokens - len(b.tokens) for _, b in parents)
            groups = engine.generate([prompts[i] + b.tokens for i, b in parents], SamplingParams(
                n=candidates - 1, temperature=temperature, max_new_tokens=budget, stop_token_ids=tuple(step_stop_ids or ()),
                seed=round_seed + block))
            for (i, b), g in zip(parents, groups):
                room = max_new_tokens - len(b.tokens)
                for s in g:
                    toks = s.token_ids[:room]
                    generated[i] += len(toks)
                    cut = first_step(b.tokens, toks, tokenizer, splitter)
                    ends = (cut == len(toks) and (bool(toks) and toks[-1] in eos)) or len(b.tokens) + cut >= max_new_tokens
                    proposals.append((i, b, toks[:cut], ends, [], False))
        # score every candidate: Q of the new state
        seqs = [prompts[i] + b.tokens + step for i, b, step, *_ in proposals]
        qs = verifier_q(seqs, [[len(s) - 1] for s in seqs])
        ranked: list[list[tuple[float, int]]] = [[] for _ in prompts]
        for k, ((i, b, step, *_), q) in enumerate(zip(proposals, qs)):
            ranked[i].append((beam_score(q[0], mu(q[0]) - mu(b.q), alpha), k))
        new_beams: list[list[Beam]] = [[] for _ in prompts]
        for i in range(len(prompts)):
            keep = beam_width - len(done[i])
            for _, k in sorted(ranked[i], key=lambda t: (-t[0], t[1]))[:max(keep, 0)]:
                _, parent, step, finished, rest, rest_finished = proposals[k]
                beam = Beam(parent.tokens + step, qs[k][0], rest=rest, rest_finished=rest_finished)
                if finished or not step:
                    beam.finished = True
                    done[i].append(beam)
                else:
                    new_beams[i].append(beam)
        beams = new_beams
        n_round += 1
    results = []
    for i in range(len(prompts)):
        best = max(done[i], key=lambda b: b.q)  # every beam ends finished: the length limit ends the rest
        results.append(SearchResult(tokens=best.tokens, q=best.q, generated_tokens=generated[i]))
    return results
