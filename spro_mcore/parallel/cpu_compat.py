"""Run megatron-core on a CPU-only torch: the one place that knows how.

megatron-core assumes CUDA in a few dozen places. On a machine without CUDA this module patches exactly
those, process-wide, so that the same Megatron code path (GPTModel, TP/PP, pipeline schedules, DDP,
the distributed optimizer, dist_checkpointing) runs over gloo on CPU. It is

- applied automatically by `spro_mcore.parallel` (and therefore before any Megatron model is built),
- applied only when `torch.cuda.is_available()` is False (a CUDA machine is never touched),
- idempotent (a second call changes nothing).

Each patch below names the megatron-core call sites (0.16.x; the same sites exist in 0.17-0.19) that need it.
Four more are for speed only, the same values up to float rounding (`_patch_linear_bias`, `_patch_rope_concat`
with `_RopeHalves`, `_patch_swiglu`, `_patch_rmsnorm`): work the GPU path fuses away and a CPU op pays in full. Two are for
start-up time only (`_megatron_import_without_compile`, `_patch_checkpoint_results_queue`): a CPU process pays
them on every launch and runs nothing they buy.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import types
from typing import Any, Iterator

import torch

log = logging.getLogger(__name__)

_APPLIED = False
# the speed patches as (owner, attribute, megatron-core's value, ours): `without_speed_patches` swaps them back
_SPEED_PATCHES: list[tuple[Any, str, Any, Any]] = []

# Modules that create tensors with a hard-coded `device="cuda"` (or call `torch.device("cuda", i)`,
# `pin_memory=True`, `torch.cuda.get_rng_state`) through their module-level name `torch`. Each gets a view of
# torch whose tensor factories map cuda -> cpu. Keyed by module, valued by the call sites.
_CUDA_FACTORY_MODULES = {
    "megatron.core.pipeline_parallel.schedules": "total_num_tokens = torch.zeros(..., device='cuda') in every schedule",
    "megatron.core.pipeline_parallel.p2p_communication": "tensor_recv_prev/next = torch.empty(..., device=torch.cuda.current_device())",
    "megatron.core.optimizer.grad_scaler": "ConstantGradScaler/DynamicGradScaler: torch.tensor(..., device='cuda')",
    "megatron.core.optimizer.optimizer": "found_inf, _dummy_overflow_buf, _scale_one, FP32Optimizer._scale",
    "megatron.core.optimizer.distrib_optimizer": "gbuf range exchange buffers",
    "megatron.core.optimizer.clip_grads": "get_grad_norm_fp32 / clip_grad_by_total_norm_fp32 / count_zeros_fp32 buffers",
    "megatron.core.distributed.param_and_grad_buffer": "tmp_warmup_tensor = torch.zeros([1], device='cuda')",
    "megatron.core.distributed.distributed_data_parallel": "grad buffers placed on torch.cuda.current_device()",
    "megatron.core.transformer.utils": "get_default_causal_mask / get_sliding_window_causal_mask",
    "megatron.core.tensor_parallel.data": "broadcast_data: sizes_cuda = torch.tensor(..., device='cuda')",
    "megatron.core.tensor_parallel.random": "CudaRNGStatesTracker.add/fork: torch.cuda.get_rng_state/manual_seed",
    "megatron.core.utils": "check_param_hashes_across_dp_replicas, get_batch_on_this_cp_rank helpers",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver": "verify_global_md_reuse: torch.tensor(..., device='cuda')",
    "megatron.core.dist_checkpointing.exchange_utils": "exchange_loaded_tensors_*: torch.empty_like(..., device='cuda')",
}

# Modules whose `Tensor.type()` string checks expect 'torch.cuda.FloatTensor' & co.
_TYPE_STRING_MODULES = (
    "megatron.core.optimizer.optimizer",  # MixedPrecisionOptimizer: param.type() == 'torch.cuda.FloatTensor'
    "megatron.core.optimizer.distrib_optimizer",  # _build_model_and_main_param_groups: model_param.type()
    "megatron.core.optimizer.clip_grads",  # clip_grad_by_total_norm_fp32: param.grad.type() assert
)


def _is_cuda(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int)  # a bare ordinal means a CUDA device in torch's factories


def _cpu_kwargs(kwargs: dict) -> dict:
    if _is_cuda(kwargs.get("device")):
        kwargs["device"] = "cpu"
    if kwargs.get("pin_memory"):
        kwargs["pin_memory"] = False
    return kwargs


def _wrap_factory(fn):
    def factory(*args, **kwargs):
        return fn(*args, **_cpu_kwargs(kwargs))

    factory.__name__ = getattr(fn, "__name__", "factory")
    factory.__wrapped__ = fn
    return factory


class _CpuCudaNamespace(types.SimpleNamespace):
    """`torch.cuda` as seen by a patched module: RNG calls go to the CPU generator."""

    def __getattr__(self, name: str):
        return getattr(torch.cuda, name)


def _cpu_cuda_namespace() -> _CpuCudaNamespace:
    rng = types.SimpleNamespace(get_rng_state=lambda device=None: torch.get_rng_state())
    return _CpuCudaNamespace(
        get_rng_state=lambda device=None: torch.get_rng_state(),
        set_rng_state=lambda state, device=None: torch.set_rng_state(state),
        manual_seed=lambda seed: torch.manual_seed(seed),
        random=rng,
    )


class _CpuTorchView(types.ModuleType):
    """A stand-in for the name `torch` inside one megatron-core module: factories map cuda -> cpu."""

    _FACTORIES = (
        "tensor", "zeros", "ones", "empty", "full", "arange", "rand", "randn", "randint",
        "zeros_like", "ones_like", "empty_like", "full_like", "as_tensor",
    )

    def __init__(self):
        super().__init__("torch")
        for name in self._FACTORIES:
            setattr(self, name, _wrap_factory(getattr(torch, name)))
        self.cuda = _cpu_cuda_namespace()

    def device(self, *args, **kwargs):  # torch.device("cuda", i) -> cpu
        if args and _is_cuda(args[0]) and not isinstance(args[0], int):
            return torch.device("cpu")
        return torch.device(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(torch, name)


def _caller_module(depth: int = 2) -> str:
    return sys._getframe(depth).f_globals.get("__name__", "")


def _patch_tensor_methods() -> None:
    """`.cuda()` from megatron-core (optimizer state reload, exchange_utils, language_module's embedding
    sync, tensor_parallel.data.broadcast_data) becomes a no-op; `.type()` in the optimizer modules reports
    the CUDA type names its string checks expect. Both only for callers inside megatron.core."""
    orig_cuda = torch.Tensor.cuda
    orig_type = torch.Tensor.type

    def cuda(self, *args, **kwargs):
        if _caller_module().startswith("megatron."):
            return self
        return orig_cuda(self, *args, **kwargs)

    def type_(self, *args, **kwargs):
        out = orig_type(self, *args, **kwargs)
        if not args and not kwargs and _caller_module() in _TYPE_STRING_MODULES:
            return out.replace("torch.", "torch.cuda.", 1)
        return out

    torch.Tensor.cuda = cuda
    torch.Tensor.type = type_


class _NullStream:
    """What `torch.cuda.current_stream()` returns on CPU (grad buffers on megatron-core 0.19)."""

    def synchronize(self):
        pass

    def wait_stream(self, other):
        pass

    def record_event(self, event=None):
        return event

    def wait_event(self, event):
        pass


def _patch_torch_cuda() -> None:
    # ~36 sites use torch.cuda.current_device() as a device (buffers, TP mappings, cross entropy, DDP).
    torch.cuda.current_device = lambda: "cpu"
    # p2p_communication (after batched isend/irecv), parallel_state, timers.
    torch.cuda.synchronize = lambda device=None: None
    # param_and_grad_buffer / DDP on megatron-core 0.19.
    torch.cuda.current_stream = lambda device=None: _NullStream()


def _patch_rng() -> None:
    """tensor_parallel.random keeps the model-parallel RNG states as CUDA generator states; keep them as
    CPU generator states instead (dropout under TP forks the tracker)."""
    random = importlib.import_module("megatron.core.tensor_parallel.random")
    random._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)
    # fork() warns when the CPU generator moved inside a "GPU" RNG context: on CPU that is the point.
    logging.getLogger(random.__name__).addFilter(
        lambda record: "CPU RNG state changed within GPU RNG context" not in record.getMessage()
    )


def _patch_sharded_tensor_init() -> None:
    """dist_checkpointing.exchange_utils calls ShardedTensor.init_data('cuda') before loading shards."""
    mapping = importlib.import_module("megatron.core.dist_checkpointing.mapping")
    orig = mapping.ShardedTensor.init_data

    def init_data(self, device, init_fn=torch.empty):
        return orig(self, "cpu" if _is_cuda(device) else device, init_fn)

    mapping.ShardedTensor.init_data = init_data


class _Memo:
    """A one-entry memo keyed on tensors' identity and in-place version (and a few plain values): within one
    forward megatron hands every layer's q and k the same `freqs` (and `cu_seqlens`) objects, so what is
    derived from them is computed once a forward, not twice a layer. It holds its tensors until the next
    miss, so an id cannot be reused while it is the key."""

    def __init__(self):
        self._tensors, self._key, self._value = (), None, None

    def __call__(self, tensors: tuple, extra: tuple, make):
        key = (tuple(t._version for t in tensors), extra, torch.is_inference_mode_enabled())  # also the count
        if key != self._key or any(a is not b for a, b in zip(tensors, self._tensors)):
            self._value = make()
            self._tensors, self._key = tensors, key
        return self._value


_ROPE_TABLES = _Memo()
_THD_FREQS = _Memo()


def _rope_tables(freqs, mscale: float, dtype, rotary_interleaved: bool):
    """(cos, sin, the frequencies are duplicated halves) as megatron's `_apply_rotary_pos_emb_bshd` makes them."""
    cos_ = (torch.cos(freqs) * mscale).to(dtype)
    sin_ = (torch.sin(freqs) * mscale).to(dtype)
    rot_dim = freqs.shape[-1]
    half = rot_dim // 2
    halves = (not rotary_interleaved and rot_dim % 2 == 0
              and torch.equal(freqs[..., :half], freqs[..., half:]))
    return cos_, sin_, halves


def _patch_rope_concat() -> None:
    """Speed, not correctness: megatron's `_apply_rotary_pos_emb_bshd` ends with `torch.cat((t, t_pass))`
    even when no dimension passes through (every dense Llama/Qwen model), one full copy of q and of k per
    layer that CPU ops pay in full. Skip the concatenation when `t_pass` is empty (same values). With the
    usual duplicated-halves frequencies (non-interleaved) the rotation itself goes to `_RopeHalves`. cos and
    sin are computed once a forward (`_Memo`), and so is the packed (THD) path's per-sequence frequency
    table, which megatron rebuilds from one slice per sequence for q and for k of every layer (without
    context parallelism; with it, megatron's own)."""
    rope_utils = importlib.import_module("megatron.core.models.common.embeddings.rope_utils")
    orig = rope_utils._apply_rotary_pos_emb_bshd
    orig_thd = rope_utils._apply_rotary_pos_emb_thd

    def apply_bshd(t, freqs, rotary_interleaved=False, multi_latent_attention=False, mscale=1.0):
        rot_dim = freqs.shape[-1]
        if multi_latent_attention or t.shape[-1] != rot_dim:
            return orig(t, freqs, rotary_interleaved, multi_latent_attention, mscale)
        cos_, sin_, halves = _ROPE_TABLES((freqs,), (mscale, t.dtype, t.device, rotary_interleaved),
                                          lambda: _rope_tables(freqs, mscale, t.dtype, rotary_interleaved))
        if halves:
            if not torch.is_grad_enabled():  # the log-prob passes: no autograd node to build
                return _rotate_halves(t, cos_, sin_)
            return _RopeHalves.apply(t, cos_, sin_)
        return (t * cos_) + (rope_utils._rotate_half(t, rotary_interleaved) * sin_)

    def thd_freqs(cu_seqlens, freqs):  # megatron's per-sequence slices, without context parallelism
        starts, lens = cu_seqlens[:-1].tolist(), (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        exact = freqs.dim() >= 1 and freqs.size(0) == cu_seqlens[-1]  # positions across the whole pack
        return torch.cat([freqs[s:s + n] if exact else freqs[:n] for s, n in zip(starts, lens)])

    def apply_thd(t, cu_seqlens, freqs, rotary_interleaved=False, multi_latent_attention=False, mscale=1.0,
                  cp_group=None):
        if cp_group is None or cp_group.size() != 1:
            return orig_thd(t, cu_seqlens, freqs, rotary_interleaved, multi_latent_attention, mscale, cp_group)
        packed = _THD_FREQS((cu_seqlens, freqs), (), lambda: thd_freqs(cu_seqlens, freqs))
        return rope_utils._apply_rotary_pos_emb_bshd(
            t.unsqueeze(1), packed, rotary_interleaved=rotary_interleaved,
            multi_latent_attention=multi_latent_attention, mscale=mscale).squeeze(1)

    _speed_patch(rope_utils, "_apply_rotary_pos_emb_bshd", apply_bshd)
    _speed_patch(rope_utils, "_apply_rotary_pos_emb_thd", apply_thd)
    for name in ("megatron.core.models.common.embeddings.rotary_pos_embedding",):  # re-exported there
        module = importlib.import_module(name)
        for attr, was, now in (("_apply_rotary_pos_emb_bshd", orig, apply_bshd),
                               ("_apply_rotary_pos_emb_thd", orig_thd, apply_thd)):
            if getattr(module, attr, None) is was:
                _speed_patch(module, attr, now)


def _rotate_halves(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]: three passes instead of five (no neg, no cat), each
    # value rounded exactly as in `x * cos + rotate_half(x) * sin` (no fused multiply-add)
    half = t.shape[-1] // 2
    out = t * cos
    tmp = t * sin
    out[..., :half].sub_(tmp[..., half:])  # not `-=`: its __setitem__ would copy the view onto itself
    out[..., half:].add_(tmp[..., :half])
    return out


class _RopeHalves(torch.autograd.Function):
    """RoPE for a duplicated-halves frequency vector (megatron's non-interleaved `cat((freqs, freqs))`). The
    rotation is orthogonal: its backward is the rotation by -sin. Autograd of megatron's
    `x*cos + cat(-x2, x1)*sin` runs chunk, neg, cat and their backwards (another cat) and saves x; this saves
    only cos and sin."""

    @staticmethod
    def forward(ctx, t, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate_halves(t, cos, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rotate_halves(grad, cos, -sin), None, None


class _SwiGLU(torch.autograd.Function):
    """silu(a) * b for x = [a, b] (megatron's fused fc1 output): the input gradient is written into one
    [.., 2f] tensor (autograd's backward of `torch.chunk` is a `torch.cat` of the two halves' gradients)."""

    @staticmethod
    def forward(ctx, x):
        a, b = x.chunk(2, dim=-1)
        silu_a = torch.nn.functional.silu(a)
        ctx.save_for_backward(x, silu_a)
        return silu_a * b

    @staticmethod
    def backward(ctx, grad):
        x, silu_a = ctx.saved_tensors
        a, b = x.chunk(2, dim=-1)
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        ga, gb = grad_x.chunk(2, dim=-1)
        torch.mul(grad, silu_a, out=gb)
        torch.ops.aten.silu_backward.grad_input(grad * b, a, grad_input=ga)
        return grad_x


def _patch_swiglu() -> None:
    """Speed, not correctness: megatron's unfused gated MLP computes `silu(a) * (b + glu_linear_offset)`, a
    full pass over b to add 0.0, and autograd's backward of its `torch.chunk` concatenates the two halves'
    gradients (another pass). With the plain SwiGLU (offset 0, no clamp, no per-token scale, no fusion
    configured) `_SwiGLU` computes the same values; anything else goes to megatron's forward."""
    mlp = importlib.import_module("megatron.core.transformer.mlp")
    orig = mlp.MLP.forward

    # **kwargs: TransformerLayer passes `padding_mask` (MoE routing); megatron's dense MLP ignores it, as here
    def forward(self, hidden_states, per_token_scale=None, **kwargs):
        c = self.config
        if (per_token_scale is not None or getattr(c, "use_te_activation_func", False)
                or c.bias_activation_fusion or not c.gated_linear_unit
                or c.activation_func is not torch.nn.functional.silu
                or getattr(c, "activation_func_clamp_value", None) is not None
                or getattr(c, "glu_linear_offset", 0.0) != 0.0):
            return orig(self, hidden_states, per_token_scale, **kwargs)
        x, bias = self.linear_fc1(hidden_states)
        if bias is not None:
            x = x + bias
        if torch.is_grad_enabled():
            return self.linear_fc2(_SwiGLU.apply(x))
        a, b = x.chunk(2, dim=-1)
        return self.linear_fc2(torch.nn.functional.silu(a).mul_(b))  # no grad: the product in place

    _speed_patch(mlp.MLP, "forward", forward)


def _rms_rstd(x: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / RMS of the last dimension, op for op as torch's composite `rms_norm` (the with- and without-grad
    paths share it, so their outputs are bit-equal)."""
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))


class _RMSNormFn(torch.autograd.Function):
    """y = x * rsqrt(mean(x^2) + eps) * w over the last dimension, forward exactly as torch's composite
    `rms_norm` (same ops, same order: bit-equal), backward in closed form
    (gx = rstd * (g*w - xh * mean(g*w*xh)), gw = sum g*xh with xh = x * rstd) instead of autograd's walk back
    through pow, mean, add, rsqrt and two products."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = _rms_rstd(x, eps)
        ctx.save_for_backward(x, weight, rstd)
        return (x * rstd).mul_(weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        xh = x * rstd
        gw = (grad * xh).reshape(-1, x.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        gxh = grad * weight
        dot = (gxh * xh).mean(-1, keepdim=True)
        return gxh.sub_(xh.mul_(dot)).mul_(rstd), gw, None


class _CpuRMSNorm(torch.nn.RMSNorm):
    """The torch.nn.RMSNorm that megatron's local spec builds without Transformer Engine or Apex
    (`WrappedTorchNorm`), with `forward` as a speed patch (`_patch_rmsnorm`)."""

    forward = torch.nn.RMSNorm.forward


def _rms_norm_forward(self, x):
    w = self.weight
    if (w is None or x.dtype != torch.float32 or w.dtype != torch.float32
            or tuple(self.normalized_shape) != (x.shape[-1],)):
        return torch.nn.RMSNorm.forward(self, x)  # not covered: torch's own
    eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
    if not torch.is_grad_enabled() or not (x.requires_grad or w.requires_grad):
        return (x * _rms_rstd(x, eps)).mul_(w)  # no autograd node
    return _RMSNormFn.apply(x, w, eps)


def _patch_rmsnorm() -> None:
    """Speed, not correctness: without Transformer Engine or Apex megatron's local spec normalises with
    torch.nn.RMSNorm, whose CPU path is the composite `rms_norm` (pow, mean, add, rsqrt, two products) and
    autograd's backward through each of them: ~2x the time of one closed-form backward (9 norms a pass
    of a 4-layer model). `WrappedTorchNorm` builds `_CpuRMSNorm` instead: the same module, parameters and
    state dict; its forward goes to `_RMSNormFn` (fp32 only; anything else to torch's)."""
    tn = importlib.import_module("megatron.core.transformer.torch_norm")
    orig_new = tn.WrappedTorchNorm.__new__

    def new(cls, *args, **kwargs):
        norm = orig_new(cls, *args, **kwargs)
        if type(norm) is torch.nn.RMSNorm:
            norm.__class__ = _CpuRMSNorm
        return norm

    tn.WrappedTorchNorm.__new__ = staticmethod(new)
    _speed_patch(_CpuRMSNorm, "forward", _rms_norm_forward)


def _patch_linear_bias() -> None:
    """Speed, not correctness: megatron's linear autograd function computes `matmul(x, w.t()) + bias` (a
    second pass over the output; the GPU path fuses it in TE or in gradient-accumulation fusion). On CPU
    `addmm` adds the bias inside the GEMM. Same saved tensors and ctx fields as megatron's forward (the
    backward is megatron's, unchanged); the sequence-parallel branch is left to the original."""
    layers = importlib.import_module("megatron.core.tensor_parallel.layers")
    fn = layers.LinearWithGradAccumulationAndAsyncCommunication
    orig = fn.forward

    def forward(ctx, input, weight, bias, gradient_accumulation_fusion, allreduce_dgrad, sequence_parallel,
                grad_output_buffer, wgrad_deferral_limit, tp_group):
        if bias is None or sequence_parallel:
            return orig(ctx, input, weight, bias, gradient_accumulation_fusion, allreduce_dgrad,
                        sequence_parallel, grad_output_buffer, wgrad_deferral_limit, tp_group)
        # the ctx fields megatron's forward sets (its backward reads them)
        ctx.main_grad = weight.main_grad if gradient_accumulation_fusion and hasattr(weight, "main_grad") else None
        ctx.save_for_backward(input, weight)
        ctx.use_bias = True
        ctx.gradient_accumulation_fusion = gradient_accumulation_fusion
        ctx.allreduce_dgrad = allreduce_dgrad
        ctx.sequence_parallel = sequence_parallel
        ctx.wgrad_deferral_limit = wgrad_deferral_limit
        ctx.grad_output_buffer = grad_output_buffer
        ctx.tp_group = tp_group
        out = torch.addmm(bias, input.reshape(-1, input.shape[-1]), weight.t())
        return out.view(*input.shape[:-1], weight.shape[0])

    _speed_patch(fn, "forward", staticmethod(layers.custom_fwd(forward)) if hasattr(layers, "custom_fwd")
                 else staticmethod(forward))


def _speed_patch(owner: Any, name: str, new: Any) -> None:
    old = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)  # a staticmethod stays one
    _SPEED_PATCHES.append((owner, name, old, new))
    setattr(owner, name, new)


@contextlib.contextmanager
def without_speed_patches() -> Iterator[None]:
    """megatron-core's own functions in place of the speed-only patches while inside (for the patched ==
    unpatched tests and the benchmarks' A/B). Not thread-safe: it swaps process-wide attributes."""
    for owner, name, old, _ in _SPEED_PATCHES:
        setattr(owner, name, old)
    try:
        yield
    finally:
        for owner, name, _, new in _SPEED_PATCHES:
            setattr(owner, name, new)


@contextlib.contextmanager
def _megatron_import_without_compile():
    """megatron-core wraps its fusions in `torch.compile` when they are defined (`megatron.core.jit.jit_fuser`),
    which imports dynamo and inductor: ~2 s of every process's start-up. The CPU path never calls those fusions
    (the local spec, no bias-activation fusion), and a compiled function on CPU would be an inductor C++ build,
    so while megatron-core is first imported `torch.compile` hands the function back unchanged; `jit_fuser`
    keeps that binding, as with megatron's own `disable_jit_fuser`."""
    if "megatron.core" in sys.modules:  # imported before the patches: nothing to save
        yield
        return
    real = torch.compile

    def uncompiled(model=None, **kwargs):
        return model if model is not None else (lambda fn: fn)

    torch.compile = uncompiled
    try:
        yield
    finally:
        torch.compile = real


def _patch_checkpoint_results_queue() -> None:
    """dist_checkpointing's writer returns its results through a `multiprocessing.Manager` queue started with the
    spawn method: a fresh interpreter that imports torch, ~3 s before the first checkpoint of every process.
    Spawn keeps CUDA state out of the manager; a CPU process has none, so its manager is forked (milliseconds).
    The writer processes themselves are megatron's own (forked already)."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async as fa

    def forked_results_queue():
        if fa._results_queue is None:
            fa._results_queue = fa.mp.get_context("fork").Manager().Queue()
        return fa._results_queue

    fa._get_write_results_queue = forked_results_queue


def _install_torch_views() -> None:
    view = _CpuTorchView()
    for name in _CUDA_FACTORY_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # absent in this megatron-core version
            continue
        if getattr(module, "torch", None) is torch:
            module.torch = view


def apply_cpu_compat(force: bool = False) -> bool:
    """Patch megatron-core for a CPU-only torch. Returns True if the patches are (now) in place.

    Does nothing when CUDA is available (unless `force`, for tests) and nothing on a second call.
    """
    global _APPLIED
    if _APPLIED:
        return True
    if torch.cuda.is_available() and not force:
        return False
    _patch_torch_cuda()
    _patch_tensor_methods()
    with _megatron_import_without_compile():
        _install_torch_views()
    _patch_rng()
    _patch_sharded_tensor_init()
    _patch_rope_concat()
    _patch_linear_bias()
    _patch_swiglu()
    _patch_rmsnorm()
    _patch_checkpoint_results_queue()
    _APPLIED = True
    log.debug("megatron-core CPU compatibility layer applied")
    return True


def is_applied() -> bool:
    return _APPLIED
