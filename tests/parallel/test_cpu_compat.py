"""The megatron-core CPU compatibility layer: applied only without CUDA, idempotent, and each patch makes
the megatron-core call site it names work on CPU."""

import pytest
import torch

from spro_mcore.parallel import cpu_compat

pytestmark = pytest.mark.unit

needs_cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the layer is inert on CUDA machines")


@needs_cpu_only
def test_applied_on_import_and_idempotent():
    import spro_mcore.parallel  # noqa: F401

    assert cpu_compat.is_applied()
    before = (torch.cuda.current_device, torch.Tensor.cuda, torch.Tensor.type)
    assert cpu_compat.apply_cpu_compat() is True
    assert (torch.cuda.current_device, torch.Tensor.cuda, torch.Tensor.type) == before


@needs_cpu_only
def test_not_applied_when_cuda_is_available(monkeypatch):
    monkeypatch.setattr(cpu_compat, "_APPLIED", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cpu_compat.apply_cpu_compat() is False
    assert cpu_compat.is_applied() is False


@needs_cpu_only
def test_call_sites_work_on_cpu():
    import spro_mcore.parallel  # noqa: F401
    from megatron.core.optimizer import grad_scaler
    from megatron.core.transformer.utils import get_default_causal_mask

    mask = get_default_causal_mask(4)  # device="cuda" in megatron-core
    assert mask.device.type == "cpu" and mask.tolist()[0] == [False, True, True, True]
    scaler = grad_scaler.ConstantGradScaler(2.0)  # torch.tensor(..., device='cuda')
    assert float(scaler.scale) == 2.0 and scaler.scale.device.type == "cpu"
    assert torch.cuda.current_device() == "cpu"
    torch.cuda.synchronize()  # a no-op instead of "Torch not compiled with CUDA"


@needs_cpu_only
def test_scoped_to_megatron_callers():
    import spro_mcore.parallel  # noqa: F401

    t = torch.zeros(2)
    # our own code and other libraries still see the truth
    assert t.type() == "torch.FloatTensor"
    with pytest.raises((AssertionError, RuntimeError)):
        t.cuda()
    from megatron.core.optimizer import clip_grads

    # clip_grads asserts param.grad.type() == 'torch.cuda.FloatTensor'
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 4.0)
    clip_grads.clip_grad_by_total_norm_fp32([p], max_norm=1.0, total_norm=8.0)
    assert torch.allclose(p.grad, torch.full((3,), 0.5), atol=1e-5)


@needs_cpu_only
def test_rng_tracker_uses_cpu_generator():
    from megatron.core.tensor_parallel import random as mrandom

    from spro_mcore.parallel import initialize_model_parallel, seed_everything

    initialize_model_parallel(tp=1, pp=1)
    seed_everything(7)
    tracker = mrandom.get_cuda_rng_tracker()
    with tracker.fork():
        a = torch.rand(4)
    with tracker.fork():
        b = torch.rand(4)
    seed_everything(7)
    with mrandom.get_cuda_rng_tracker().fork():
        a2 = torch.rand(4)
    assert torch.equal(a, a2) and not torch.equal(a, b)


def test_start_up_patches_leave_dynamo_unimported_and_fork_the_checkpoint_manager():
    """The two start-up patches, in a fresh interpreter: importing the package (which imports megatron-core)
    pulls in neither dynamo nor inductor, megatron's `jit_fuser` returns the function unchanged, and the
    checkpoint writer's results queue comes from a forked manager that works."""
    import subprocess
    import sys

    code = (
        "import sys, spro_mcore.parallel\n"
        "assert 'torch._dynamo' not in sys.modules and 'torch._inductor' not in sys.modules, 'dynamo imported'\n"
        "from megatron.core import jit\n"
        "f = lambda x: x\n"
        "assert jit.jit_fuser(f) is f\n"
        "import torch\n"
        "assert torch.compile.__module__.startswith('torch'), 'torch.compile left patched'\n"
        "from megatron.core.dist_checkpointing.strategies import filesystem_async as fa\n"
        "q = fa._get_write_results_queue()\n"
        "q.put({'rank': 0}); assert q.get(timeout=10) == {'rank': 0}\n"
        "assert fa._get_write_results_queue() is q\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
