"""Bad input to the pav verbs, each through the real `spro-mcore` command in a fresh interpreter and held to the
bad-input harness's four properties (non-zero exit, one line naming the culprit, no traceback, every file that
was there byte-identical): a missing collection, a collection of another base policy or splitter, n_mc=0, a
verifier directory without a value head, and `pav train` into a folder that holds another collection's verifier
or checkpoints, or a model that is not a verifier."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from spro_mcore.config import load_config
from spro_mcore.pav.collect import collect
from tests.badinput.harness import Case, check, run_subprocess, snapshot
from tests.pav.random_verifier import make_random_verifier
from tests.pav.test_collect import overrides
from tests.pav.tiny_vocab import make_policy, write_prompts

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny policy, its prompts and a collection (all outside the case folders: read, never written)."""
    root = tmp_path_factory.mktemp("pavbad")
    policy, prompts = make_policy(root / "policy"), write_prompts(root / "prompts.jsonl")
    base = overrides(policy, prompts, root / "data", n_mc=2, num_prompts=4, prompts_per_batch=4)
    collect(load_config(None, base))
    return root, policy, base


def _verifier_of_another_collection(tmp: Path, world) -> None:
    v = make_random_verifier(tmp / "v", base=world[1])
    info = json.loads((v / "pav_verifier.json").read_text())
    (v / "pav_verifier.json").write_text(json.dumps({**info, "collection_id": "0" * 16, "data_dir": "/elsewhere"}))
    (v / "metrics.jsonl").write_text('{"step": 1, "train/loss": 0.5}\n')


def _checkpoint_of_another_collection(tmp: Path, world) -> None:
    """What a `pav train` of another collection left: a complete checkpoint (its trainer state is what tells)."""
    import torch

    from spro_mcore.trainer.checkpoint import files

    ckpt = tmp / "v" / "checkpoints" / "step_3"
    ckpt.mkdir(parents=True)
    (ckpt / "metadata.json").write_text("{}")
    torch.save({"format": 1, "kind": "pav_verifier", "step": 3, "collection": {"id": "0" * 16, "data_dir": "/elsewhere"}},
               ckpt / files.TRAINER_STATE)
    files.write_manifest(ckpt, {n: files.file_digest(ckpt / n) for n in files.list_files(ckpt)}, {"step": 3})
    files.write_latest(ckpt.parent, ckpt)


def _model_folder(tmp: Path, world) -> None:
    shutil.copytree(world[1], tmp / "v")


CASES = [
    # (id, verb, extra overrides, folder builder, culprit)
    ("missing-collection", "train", ["pav.data_dir={tmp}/nothing"], None, r"no PAV collection"),
    ("collection-of-another-policy", "train", ["model.path=builtin:tiny_base"], None, r"collected with the policy"),
    ("collection-of-another-splitter", "train", ["pav.splitter=regex:b"], None, r"pav\.splitter"),
    ("n-mc-zero", "collect", ["pav.n_mc=0", "pav.data_dir={tmp}/new"], None, r"pav\.n_mc"),
    ("score-without-value-head", "score", ["pav.verifier_dir={tmp}/v", "pav.score_input={tmp}/in.jsonl"],
     _model_folder, r"is not a PAV verifier"),
    ("train-over-another-collections-verifier", "train", [], _verifier_of_another_collection,
     r"pav\.verifier_dir={tmp}/v already holds a verifier trained on another collection"),
    ("train-over-another-collections-checkpoints", "train", [], _checkpoint_of_another_collection,
     r"pav\.verifier_dir={tmp}/v holds checkpoints of a verifier trained on another collection"),
    ("train-over-a-model", "train", [], _model_folder, r"pav\.verifier_dir={tmp}/v holds a model that is not a PAV verifier"),
    ("train-async-save", "train", ["checkpoint.async_save=true"], None, r"checkpoint\.async_save=true"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_pav_bad_input(world, tmp_path, case):
    _, verb, extra, build, culprit = case
    if build is not None:
        build(tmp_path, world)
    (tmp_path / "in.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    args = [a for a in world[2]] + [f"pav.verifier_dir={tmp_path / 'v'}"] + [e.replace("{tmp}", str(tmp_path)) for e in extra]
    before = snapshot(tmp_path)
    got = run_subprocess(["pav", verb, *args], timeout=240)
    check(Case(case[0], lambda t, s: [], culprit, subprocess=True), tmp_path, before, got)
    assert not (tmp_path / "new").exists()  # nothing was created either
