"""The device seam of collectives (spro_mcore/parallel/collectives.py) and the rule that every collective goes
through it, and that only the megatron policy, models/ and parallel/ import megatron.

CPU cannot hold a CUDA tensor, so the device choice is checked with `meta` standing in for the backend's
device: whatever device the caller's tensor is on, the backend must receive it on the communication device
and the caller must get the result back on its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from spro_mcore.parallel import collectives
from tests.multiproc import run_in_processes

PKG = Path(__file__).resolve().parents[2] / "spro_mcore"
COLLECTIVES = {"all_reduce", "broadcast", "all_gather", "reduce", "barrier", "broadcast_object_list",
               "all_gather_object", "gather_object", "scatter_object_list", "reduce_scatter", "send", "recv",
               "isend", "irecv", "scatter", "gather", "all_to_all", "all_to_all_single", "all_gather_into_tensor",
               "reduce_scatter_tensor"}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        yield path.relative_to(PKG.parent).as_posix(), ast.parse(path.read_text())


def _dist_aliases(tree) -> set[str]:
    names = {"torch.distributed"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname for a in node.names if a.name == "torch.distributed" and a.asname}
        if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "distributed" for a in node.names):
            names |= {a.asname or a.name for a in node.names if a.name == "distributed"}
    return names


@pytest.mark.unit
def test_no_collective_outside_the_seam():
    offenders = []
    for name, tree in _modules():
        if name == "spro_mcore/parallel/collectives.py":
            continue
        aliases = _dist_aliases(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in COLLECTIVES:
                owner = ast.unparse(node.func.value)
                if owner in aliases:
                    offenders.append(f"{name}:{node.lineno} {owner}.{node.func.attr}")
            if isinstance(node, ast.ImportFrom) and node.module in ("torch.distributed", "torch.distributed.distributed_c10d"):
                offenders += [f"{name}:{node.lineno} from {node.module} import {a.name}" for a in node.names
                              if a.name in COLLECTIVES]
    assert not offenders, "collectives must go through spro_mcore.parallel.collectives:\n" + "\n".join(offenders)


@pytest.mark.unit
def test_only_the_megatron_side_imports_megatron():
    # the megatron-core side: models, parallel layout, the policy's implementation, the PAV verifier's model
    # and its trainer (a Megatron model with a value head, trained like the policy)
    allowed = ("spro_mcore/models/", "spro_mcore/parallel/", "spro_mcore/trainer/policy/megatron_",
               "spro_mcore/pav/verifier.py", "spro_mcore/pav/train.py")
    offenders = []
    for name, tree in _modules():
        if name.startswith(allowed):
            continue
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{name}:{node.lineno} {m}" for m in mods if m.split(".")[0] == "megatron"]
    assert not offenders, "only the megatron policy, models/ and parallel/ import megatron:\n" + "\n".join(offenders)


@pytest.mark.unit
def test_the_scan_sees_a_direct_call(tmp_path):
    """The rule above can fail: a direct call in a module is found."""
    tree = ast.parse("import torch.distributed as dd\ndef f(t):\n    dd.all_reduce(t)\n")
    aliases = _dist_aliases(tree)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func.value) in aliases]
    assert calls and calls[0].func.attr in COLLECTIVES


class _FakeBackend:
    """Records the device of every tensor handed to torch.distributed, and doubles it like a 2-rank sum."""

    def __init__(self):
        self.devices = []

    def all_reduce(self, t, op=None, group=None):
        self.devices.append(t.device)
        t.mul_(2)

    def broadcast(self, t, src=0, group=None):
        self.devices.append(t.device)
        t.add_(1)


@pytest.mark.unit
@pytest.mark.parametrize("comm", ["meta", "cpu"])
def test_tensors_travel_on_the_backend_device_and_come_back(monkeypatch, comm):
    fake = _FakeBackend()
    comm_dev = torch.device(comm)
    monkeypatch.setattr(collectives, "size", lambda group="world": 2)
    monkeypatch.setattr(collectives, "comm_device", lambda group="world": comm_dev)
    monkeypatch.setattr(collectives, "global_rank", lambda group, r: r)
    monkeypatch.setattr(collectives, "process_group", lambda group: None)
    monkeypatch.setattr(collectives.dist, "all_reduce", fake.all_reduce)
    monkeypatch.setattr(collectives.dist, "broadcast", fake.broadcast)
    t = torch.tensor([1.0, 2.0])
    if comm == "meta":  # meta holds no data: only the device is checked, the copy back is skipped
        monkeypatch.setattr(torch.Tensor, "copy_", lambda self, src: self)
        collectives.all_reduce(t, "sum", group="dp")
        collectives.broadcast(t, 0, group="pp")
        assert fake.devices == [comm_dev, comm_dev] and t.device.type == "cpu"
    else:
        collectives.all_reduce(t, "sum", group="dp")
        collectives.broadcast(t, 0, group="pp")
        assert fake.devices == [comm_dev, comm_dev]
        assert t.tolist() == [3.0, 5.0]  # the caller's tensor holds the result


@pytest.mark.unit
def test_nccl_means_the_current_cuda_device(monkeypatch):
    monkeypatch.setattr(collectives, "process_group", lambda g: None)
    monkeypatch.setattr(collectives.dist, "get_backend", lambda g=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert collectives.comm_device("dp") == torch.device("cuda", 3)
    monkeypatch.setattr(collectives.dist, "get_backend", lambda g=None: "gloo")
    assert collectives.comm_device("dp") == torch.device("cpu")


def _two_ranks():
    import torch.distributed as dist

    from spro_mcore.parallel import initialize_model_parallel

    layout = initialize_model_parallel(tp=1, pp=1)
    r = dist.get_rank()
    t = torch.tensor([float(r + 1)])
    collectives.all_reduce(t, "sum", group="dp")
    mx = collectives.all_reduce(torch.tensor([float(r)]), "max")
    b = collectives.broadcast(torch.tensor([float(r * 10)]), src_group_rank=1)
    gathered = collectives.all_gather(torch.tensor([r, r]), group="dp")
    obj = collectives.broadcast_object({"from": r}, src_group_rank=1, group="world")
    objs = collectives.all_gather_object(r, group="dp")
    anyr = collectives.any_rank(r == 1)
    collectives.barrier()
    return {"dp": layout.dp, "sum": t.item(), "max": mx.item(), "b": b.item(),
            "gathered": [g.tolist() for g in gathered], "obj": obj, "objs": objs, "any": anyr}


@pytest.mark.dist
def test_collectives_over_two_gloo_ranks():
    for out in run_in_processes(_two_ranks, 2, timeout=120):
        assert out == {"dp": 2, "sum": 3.0, "max": 1.0, "b": 10.0, "gathered": [[0, 0], [1, 1]],
                       "obj": {"from": 1}, "objs": [0, 1], "any": True}
