"""Delta weight sync (rollout.weight_sync_delta): after a step that changes some tensors only those are sent,
the receiving side ends equal to a full sync, and a missed, partial or altered delta is refused in one line.
References: the full state dict itself (what a full sync would hold), tensor by tensor, bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from spro_mcore.rollout.weight_sync import SyncMeter, iter_buckets
from spro_mcore.rollout.weight_sync_delta import DeltaError, DeltaReceiver, DeltaSender, Manifest, tensor_digest
from spro_mcore.rollout.weight_sync_folder import INDEX_NAME
from spro_mcore.rollout.weight_sync_folder_delta import folder_version, verify_delta_folder, write_delta_folder

pytestmark = pytest.mark.unit


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {f"model.layers.{i}.w": torch.randn(16, 8, generator=g) for i in range(6)}
    out["model.norm.weight"] = torch.randn(8, generator=g).to(torch.bfloat16)
    return out


def _step(w: dict[str, torch.Tensor], names) -> dict[str, torch.Tensor]:
    """A training step that moves only `names`."""
    return {n: (t + 0.01 if n in names else t.clone()) for n, t in w.items()}


def _sync_folder(sender: DeltaSender, weights: dict, folder, bucket_bytes: int = 600):
    with SyncMeter() as meter:
        write_delta_folder(meter.count(iter_buckets(sender.select(weights.items()), bucket_bytes)), folder, sender)
    manifest = verify_delta_folder(folder, sender.manifest().version)
    sender.commit()
    return meter.stats, manifest


def _folder_state(folder) -> dict[str, torch.Tensor]:
    index = json.loads((folder / INDEX_NAME).read_text())
    out = {}
    for shard in set(index["weight_map"].values()):  # what a loader reads: every tensor of every indexed file
        for name, t in load_file(str(folder / shard)).items():
            assert name not in out, f"{name} is in two files (a loader would read a stale copy)"
            out[name] = t
    assert set(out) == set(index["weight_map"])
    return out


def _assert_equal(got: dict, want: dict):
    assert set(got) == set(want)
    for n in want:
        assert got[n].dtype == want[n].dtype and torch.equal(got[n], want[n]), n


def test_digest_sees_bytes_dtype_and_shape():
    x = torch.arange(6.0)
    assert tensor_digest(x) == tensor_digest(x.clone())
    assert tensor_digest(x) != tensor_digest(x + 1e-6)
    assert tensor_digest(x) != tensor_digest(x.reshape(2, 3))
    assert tensor_digest(x.to(torch.bfloat16)) != tensor_digest(x.to(torch.float16))
    assert tensor_digest(x.reshape(2, 3).t()) == tensor_digest(x.reshape(2, 3).t().contiguous())


def test_folder_delta_sends_only_changed_and_equals_full(tmp_path):
    folder = tmp_path / "sync"
    sender = DeltaSender()
    w1 = _weights()
    stats, m1 = _sync_folder(sender, w1, folder)
    assert stats.tensors == len(w1) and m1.base is None and m1.version == 1
    _assert_equal(_folder_state(folder), w1)

    changed = {"model.layers.1.w", "model.layers.4.w"}
    w2 = _step(w1, changed)
    stats, m2 = _sync_folder(sender, w2, folder)
    assert stats.tensors == 2 and set(m2.sent) == changed and (m2.base, m2.version) == (1, 2)
    assert stats.bytes == 2 * 16 * 8 * 4
    _assert_equal(_folder_state(folder), w2)  # what a full sync of w2 holds
    # files of superseded tensors are gone; the rest are still referenced
    index = json.loads((folder / INDEX_NAME).read_text())
    assert {p.name for p in folder.glob("*.safetensors")} == set(index["weight_map"].values())

    stats, m3 = _sync_folder(sender, w2, folder)  # nothing changed: nothing sent, version still moves
    assert stats.tensors == 0 and m3.version == 3 and folder_version(folder) == 3
    _assert_equal(_folder_state(folder), w2)


def test_folder_refuses_missed_partial_and_altered(tmp_path):
    folder = tmp_path / "sync"
    sender = DeltaSender()
    w1 = _weights()
    _sync_folder(sender, w1, folder)
    w2 = _step(w1, {"model.layers.2.w", "model.layers.3.w", "model.norm.weight"})

    # a write that dies half way (one file of version 2 written): the index still says version 1, and
    # loading the folder as version 2 is refused
    def dying():
        for i, item in enumerate(sender.select(w2.items())):
            if i == 2:
                raise OSError("disk full")
            yield item
    with pytest.raises(OSError):
        write_delta_folder(iter_buckets(dying(), 100), folder, sender)
    with pytest.raises(DeltaError, match="holds version 1, the trainer wrote 2: a missed or partial update"):
        verify_delta_folder(folder, 2)
    _assert_equal(_folder_state(folder), w1)  # the old version is intact

    # the retry (sender not committed) builds on version 1 again and succeeds
    stats, m2 = _sync_folder(sender, w2, folder, bucket_bytes=100)
    assert m2.version == 2 and stats.tensors == 3
    _assert_equal(_folder_state(folder), w2)

    # altered in transit: a changed tensor's bytes no longer match the manifest
    index = json.loads((folder / INDEX_NAME).read_text())
    shard = folder / index["weight_map"]["model.layers.2.w"]
    with safe_open(str(shard), framework="pt") as f:
        header = f.metadata()
    tensors = load_file(str(shard))
    tensors["model.layers.2.w"][0, 0] += 1.0
    save_file(tensors, str(shard), metadata=header)
    with pytest.raises(DeltaError, match="'model.layers.2.w' .* does not match the checksum of version 2"):
        verify_delta_folder(folder, 2)
    tensors["model.layers.2.w"] = w2["model.layers.2.w"]
    save_file(tensors, str(shard), metadata=header)
    verify_delta_folder(folder, 2)

    # a stale shard put back in place of an unchanged tensor's shard
    stale = folder / index["weight_map"]["model.layers.0.w"]
    t = load_file(str(stale))
    with safe_open(str(stale), framework="pt") as f:
        header = dict(f.metadata())
    digests = json.loads(header["spro_digests"])
    digests["model.layers.0.w"] = tensor_digest(t["model.layers.0.w"] * 2)
    header["spro_digests"] = json.dumps(digests)
    save_file({k: v * 2 if k == "model.layers.0.w" else v for k, v in t.items()}, str(stale), metadata=header)
    with pytest.raises(DeltaError, match="'model.layers.0.w' .* stale or swapped shard"):
        verify_delta_folder(folder, 2)


def test_delta_after_a_folder_of_another_version_is_refused(tmp_path):
    folder = tmp_path / "sync"
    a, b = DeltaSender(), DeltaSender()
    _sync_folder(a, _weights(), folder)
    _sync_folder(a, _step(_weights(), {"model.layers.0.w"}), folder)
    _sync_folder(b, _weights(), folder)  # another writer's full sync replaced the folder (version 1)
    with pytest.raises(DeltaError, match="holds version 1, the trainer's delta builds on 2; sync in full"):
        write_delta_folder(iter_buckets(a.select(_weights().items()), 600), folder, a)


def test_receiver_applies_deltas_and_refuses_missed_partial_altered():
    sender, receiver = DeltaSender(), DeltaReceiver()
    held: dict[str, torch.Tensor] = {}

    def deliver(weights, tamper=None, drop=None):
        received = {n: t.clone() for n, t in sender.select(weights.items())}
        m = sender.commit()
        if tamper:
            received[tamper] += 1.0
        if drop:
            del received[drop]
        receiver.check(m, received)
        held.update(received)
        receiver.commit(m)
        return m

    w1 = _weights()
    deliver(w1)
    w2 = _step(w1, {"model.norm.weight"})
    assert deliver(w2).sent == ["model.norm.weight"]
    _assert_equal(held, w2)

    w3 = _step(w2, {"model.layers.5.w"})
    with pytest.raises(DeltaError, match="'model.layers.5.w' of version 3 does not match its checksum"):
        deliver(w3, tamper="model.layers.5.w")
    w4 = _step(w3, {"model.layers.0.w"})  # the receiver never took version 3
    with pytest.raises(DeltaError, match="version 4 builds on version 3, the receiver holds 2: an update was missed"):
        deliver(w4)
    sender.reset()  # the remedy: a full sync
    deliver(w4)
    _assert_equal(held, w4)
    with pytest.raises(DeltaError, match="arrived partially \\(1 tensors missing"):
        deliver(_step(w4, {"model.layers.1.w", "model.layers.2.w"}), drop="model.layers.2.w")


def test_manifest_round_trips_and_unread_stream_has_none():
    m = Manifest(3, 2, {"a": "x"}, ["a"])
    assert Manifest.from_json(m.to_json()) == m
    sender = DeltaSender()
    next(sender.select(_weights().items()))
    with pytest.raises(RuntimeError, match="not read to the end"):
        sender.commit()
