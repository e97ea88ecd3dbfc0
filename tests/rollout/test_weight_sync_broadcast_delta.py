"""The broadcast transport with deltas (rollout.weight_sync_delta) in two real processes over gloo: rank 0
sends, rank 1 keeps a state dict and a DeltaReceiver. After a step that changes two tensors only those two
travel and rank 1 ends equal to the full new state bit for bit; a delta built on a version rank 1 never got
(missed update) and a tensor altered after its digest (corrupt transfer) are refused on rank 1."""

from __future__ import annotations

import pytest
import torch

from spro_mcore.parallel.distributed import free_port
from tests.multiproc import run_in_processes

pytestmark = pytest.mark.dist


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {f"model.layers.{i}.w": torch.randn(17 + i, 9, generator=g).to(dtype)
            for i, dtype in enumerate([torch.float32, torch.bfloat16, torch.float16, torch.float32, torch.bfloat16])}


def _step(w, names):
    return {n: (t + 1 if n in names else t.clone()) for n, t in w.items()}


def _run(port: int) -> dict:
    import torch.distributed as dist

    from spro_mcore.parallel import collectives
    from spro_mcore.rollout import weight_sync_nccl as nccl
    from spro_mcore.rollout.weight_sync import iter_buckets
    from spro_mcore.rollout.weight_sync_delta import DeltaError, DeltaReceiver, DeltaSender

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    group = nccl.init_broadcast_group("127.0.0.1", port, rank, 2, group_name="test_delta", backend="gloo")
    out = {"sent": [], "errors": []}
    # the announce channel of this test (SGLang's is HTTP): each bucket's metadata, then None after the last
    announce = lambda meta: (collectives.broadcast_object(meta.as_json(), 0, group), lambda: None)[1]  # noqa: E731

    def buckets_then_end(stream):
        yield from iter_buckets(stream, bucket_bytes=700)
        collectives.broadcast_object(None, 0, group)

    def metas():
        while (m := collectives.broadcast_object(None, 0, group)) is not None:
            yield nccl.BucketMeta(**m)

    w1 = _weights()
    w2 = _step(w1, {"model.layers.1.w", "model.layers.3.w"})
    w3 = _step(w2, {"model.layers.0.w"})
    w4 = _step(w3, {"model.layers.4.w"})
    if rank == 0:
        sender = DeltaSender()

        def sync(weights, alter=None):
            stream = sender.select(weights.items())
            if alter:  # a transfer that corrupts a tensor after it was digested
                stream = ((n, t + 1 if n == alter else t) for n, t in stream)
            nccl.send_all(group, buckets_then_end(stream), announce, delta=sender)
            out["sent"].append(list(sender.manifest().sent))
            ok = collectives.broadcast_object(None, 1, group)  # the receiver's acknowledgement
            if ok:
                sender.commit()
            return ok

        assert sync(w1) and sync(w2)
        list(sender.select(w3.items()))
        sender.commit()  # version 3 "sent" to a receiver that never got it
        assert not sync(w4)  # refused: rank 1 holds version 2
        sender.reset()
        assert sync(w4)  # a full sync recovers
        assert not sync(_step(w4, {"model.layers.2.w"}), alter="model.layers.2.w")
    else:
        receiver, held = DeltaReceiver(), {}
        for _ in range(5):
            try:
                manifest, received = nccl.receive_delta(group, metas(), receiver)
            except DeltaError as e:
                out["errors"].append(str(e))
                collectives.broadcast_object(False, 1, group)
                continue
            held.update(received)
            receiver.commit(manifest)
            out["sent"].append(sorted(received))
            if manifest.version == 2:
                out["equal_w2"] = all(torch.equal(held[n], w2[n]) and held[n].dtype == w2[n].dtype for n in w2)
            collectives.broadcast_object(True, 1, group)
        out["equal_w4"] = set(held) == set(w4) and all(torch.equal(held[n], w4[n]) for n in w4)
    dist.barrier()
    nccl.destroy_group(group)
    return out


def test_delta_broadcast_sends_changed_only_and_refuses_missed_and_corrupt():
    sender, receiver = run_in_processes(_run, 2, free_port(), timeout=120)
    names = sorted(_weights())
    assert sender["sent"][0] == names and sender["sent"][1] == ["model.layers.1.w", "model.layers.3.w"]
    assert receiver["sent"] == [names, ["model.layers.1.w", "model.layers.3.w"], names]
    assert receiver["equal_w2"] and receiver["equal_w4"]
    missed, corrupt = receiver["errors"]
    assert "version 4 builds on version 3, the receiver holds 2: an update was missed" in missed
    assert "'model.layers.2.w' of version 5 does not match its checksum" in corrupt
