"""The checkpoint directory rules (no torch.distributed): manifest and verification catch every kind of
damage with the path in the message, `latest` and commits are atomic renames, pruning keeps the newest K,
nothing that was a complete checkpoint is ever deleted by a commit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spro_mcore.models.hf_checkpoint import CheckpointError
from spro_mcore.trainer.checkpoint import files


def _fake_checkpoint(root: Path, step: int, *, complete: bool = True) -> Path:
    """A directory with the files a checkpoint has (contents are bytes, not Megatron data)."""
    partial = root / files.new_partial_name(step)
    (partial / files.RNG_DIR).mkdir(parents=True)
    for name, data in {"metadata.json": b'{"sharded_backend": "torch_dist"}', "__0_0.distcp": bytes(range(256)) * 40,
                       "common.pt": b"common", files.TRAINER_STATE: b"state", "rng/rank_00000.pt": b"rng"}.items():
        (partial / name).write_bytes(data)
    if not complete:
        return partial
    digests = {rel: files.file_digest(partial / rel) for rel in files.list_files(partial)}
    files.write_manifest(partial, digests, {"step": step})
    final = root / files.step_name(step)
    files.commit(partial, final)
    files.write_latest(root, final)
    return final


@pytest.mark.unit
def test_verify_accepts_a_complete_checkpoint(tmp_path):
    ck = _fake_checkpoint(tmp_path, 3)
    manifest = files.verify(ck)
    assert manifest["step"] == 3 and set(manifest["files"]) == {
        "metadata.json", "__0_0.distcp", "common.pt", files.TRAINER_STATE, "rng/rank_00000.pt"}
    assert files.read_latest(tmp_path) == ck


@pytest.mark.unit
@pytest.mark.parametrize("damage, words", [
    (lambda ck: (ck / files.MANIFEST).unlink(), "incomplete: no COMPLETE.json"),
    (lambda ck: (ck / files.MANIFEST).write_text("{not json"), "corrupt COMPLETE.json"),
    (lambda ck: (ck / "__0_0.distcp").unlink(), "incomplete: __0_0.distcp is missing"),
    (lambda ck: (ck / "__0_0.distcp").write_bytes(b"short"), "corrupt: __0_0.distcp has 5 bytes"),
    (lambda ck: (ck / "__0_0.distcp").write_bytes(bytes(10240)), "__0_0.distcp does not match its checksum"),
])
def test_verify_names_the_damage_and_the_path(tmp_path, damage, words):
    ck = _fake_checkpoint(tmp_path, 5)
    damage(ck)
    with pytest.raises(CheckpointError) as e:
        files.verify(ck)
    assert str(ck) in str(e.value) and words in str(e.value)


@pytest.mark.unit
def test_checksums_are_split_over_ranks(tmp_path):
    ck = _fake_checkpoint(tmp_path, 1)
    names = sorted(json.loads((ck / files.MANIFEST).read_text())["files"])
    bad = names.index("__0_0.distcp")
    (ck / "__0_0.distcp").write_bytes(bytes(10240))  # same size: only the checksum can tell
    owner = (bad % 2, 2)
    other = (1 - bad % 2, 2)
    files.verify(ck, other)  # not this rank's share
    with pytest.raises(CheckpointError, match="checksum"):
        files.verify(ck, owner)


@pytest.mark.unit
def test_listing_ignores_partial_and_orders_newest_first(tmp_path):
    for s in (2, 10, 4):
        _fake_checkpoint(tmp_path, s)
    partial = _fake_checkpoint(tmp_path, 12, complete=False)
    assert [p.name for p in files.complete_checkpoints(tmp_path)] == ["step_10", "step_4", "step_2"]
    assert files.remove_stale(tmp_path) == [partial] and not partial.exists()


@pytest.mark.unit
def test_prune_keeps_newest_and_protected(tmp_path):
    for s in (1, 2, 3, 4):
        _fake_checkpoint(tmp_path, s)
    removed = files.prune(tmp_path, keep_last=2, protect=tmp_path / "step_1")
    assert sorted(p.name for p in removed) == ["step_2"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["step_1", "step_3", "step_4"]


@pytest.mark.unit
def test_commit_keeps_an_existing_checkpoint_aside(tmp_path):
    old = _fake_checkpoint(tmp_path, 6)
    (old / "marker").write_text("earlier attempt")
    _fake_checkpoint(tmp_path, 6)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("step_6.superseded-")]
    assert len(kept) == 1 and (kept[0] / "marker").read_text() == "earlier attempt"
    files.verify(tmp_path / "step_6")


@pytest.mark.unit
def test_latest_is_replaced_atomically(tmp_path):
    _fake_checkpoint(tmp_path, 1)
    _fake_checkpoint(tmp_path, 2)
    assert (tmp_path / files.LATEST).read_text() == "step_2\n"
    assert not list(tmp_path.glob(".latest.tmp*"))
