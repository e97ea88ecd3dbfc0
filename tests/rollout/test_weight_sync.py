"""Weight-sync bucketing, casting and the safetensors folder transport, against hand-checked expectations."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from spro_mcore.rollout.weight_sync import SyncMeter, cast_tensors, flatten, iter_buckets
from spro_mcore.rollout.weight_sync_folder import INDEX_NAME, SyncDir, write_safetensors_folder

pytestmark = pytest.mark.unit


def _named(sizes, dtype=torch.float32):
    return [(f"w{i}", torch.full((n,), float(i), dtype=dtype)) for i, n in enumerate(sizes)]


def test_buckets_are_bounded_ordered_and_complete():
    named = _named([10, 20, 5, 40, 1, 1])  # fp32: 40, 80, 20, 160, 4, 4 bytes
    buckets = list(iter_buckets(named, bucket_bytes=100))
    assert [[n for n, _ in b] for b in buckets] == [["w0"], ["w1", "w2"], ["w3"], ["w4", "w5"]]
    # every bucket fits, except a single tensor larger than the bound, which travels alone
    for b in buckets:
        assert sum(t.numel() * 4 for _, t in b) <= 100 or len(b) == 1
    assert [n for n, _ in flatten(buckets)] == [n for n, _ in named]


def test_a_name_given_twice_is_rejected():
    with pytest.raises(ValueError, match="'w0' was given twice"):
        list(iter_buckets(_named([1]) + _named([1]), bucket_bytes=100))


def test_cast_changes_floating_point_only_and_detaches():
    x = torch.randn(3, requires_grad=True)
    out = dict(cast_tensors([("x", x), ("ids", torch.arange(3))], torch.bfloat16))
    assert out["x"].dtype == torch.bfloat16 and not out["x"].requires_grad
    assert out["ids"].dtype == torch.int64
    torch.testing.assert_close(out["x"], x.detach().to(torch.bfloat16))


def test_meter_counts_bytes_tensors_buckets():
    with SyncMeter() as meter:
        list(flatten(meter.count(iter_buckets(_named([10, 20, 5], torch.bfloat16), bucket_bytes=60))))
    assert (meter.stats.bytes, meter.stats.tensors, meter.stats.buckets) == (70, 3, 2)
    assert meter.stats.seconds > 0
    assert set(meter.stats.metrics()) == {"time/weight_sync", "weight_sync/bytes"}


def test_folder_round_trip_with_index_and_config(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "qwen2"}')
    (base / "model.safetensors").write_bytes(b"old weights must not be copied")
    named = [(f"layer.{i}.weight", torch.randn(8, 8)) for i in range(5)]
    folder = write_safetensors_folder(iter_buckets(named, bucket_bytes=600), tmp_path / "sync", config_dir=base)
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((folder / INDEX_NAME).read_text())
    assert index["metadata"]["total_size"] == 5 * 64 * 4
    loaded = {}
    for shard in shards:
        loaded.update(load_file(str(folder / shard)))
    assert set(index["weight_map"]) == set(loaded) == {n for n, _ in named}
    for name, t in named:
        assert torch.equal(loaded[name], t)
        assert name in load_file(str(folder / index["weight_map"][name]))
    assert (folder / "config.json").read_text() == '{"model_type": "qwen2"}'


def test_a_smaller_sync_leaves_no_stale_shard(tmp_path):
    write_safetensors_folder(iter_buckets(_named([64] * 4), bucket_bytes=256), tmp_path / "sync")
    folder = write_safetensors_folder(iter_buckets(_named([64]), bucket_bytes=256), tmp_path / "sync")
    assert [p.name for p in folder.glob("*.safetensors")] == ["model-00001-of-00001.safetensors"]
    assert not list(tmp_path.glob("sync.staging-*"))


def test_an_empty_sync_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no tensors"):
        write_safetensors_folder(iter([]), tmp_path / "sync")


def test_a_default_sync_dir_is_removed_and_a_configured_one_kept(tmp_path):
    default = SyncDir("", "test")
    write_safetensors_folder(iter_buckets(_named([4]), bucket_bytes=64), default.path)
    configured = SyncDir(str(tmp_path / "mine"), "test")
    write_safetensors_folder(iter_buckets(_named([4]), bucket_bytes=64), configured.path)
    default.cleanup()
    configured.cleanup()
    assert not default.path.exists() and configured.path.exists()
