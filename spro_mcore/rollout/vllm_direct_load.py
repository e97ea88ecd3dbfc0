"""Direct weight update of a live vLLM model (unquantized models), run inside vLLM's worker.

vLLM's `reload_weights` (layerwise reload) stages every layer in freshly allocated buffers, loads them, then
copies the result into the live tensors: ~2.6 copies per tensor plus the page faults of new memory. For an
unquantized model the live parameters already are in checkpoint format, so, as verl and slime do on GPU, the
weights go straight through the live model's `load_weights` (one copy per tensor, each parameter's
weight_loader puts the q/k/v and gate/up shards in place); then only what the backend derives from the weights
is redone:
- CUDA / ROCm / XPU: nothing (an unquantized linear computes from its live weight);
- CPU: each unquantized linear runs from a oneDNN (or sgl / zentorch) packed copy of its weight and drops the
  weight itself (`dispatch_cpu_unquantized_gemm(remove_weight=True)`). Such a layer gets a staging weight in
  checkpoint layout (built from the metadata vLLM recorded at load, so it carries the right weight_loader),
  kept between syncs (one unpacked copy of the linears' weights: new memory on every sync would cost page
  faults, ~as much as the copies), and its packing step is re-run. The LM head (a packed copy of the
  embedding or of its own weight) is repacked the same way.
Anything else (quantized / fp8 / online-quantized layers, MoE, LoRA) keeps `reload_weights`: their
`process_weights_after_loading` transforms the live tensors, so checkpoint-format weights cannot be loaded into
them directly. `direct_load_blocker` says why a model is refused.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch


def _unquantized_methods():
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    return UnquantizedLinearMethod, UnquantizedEmbeddingMethod


def direct_load_blocker(model: torch.nn.Module, vllm_config) -> Optional[str]:
    """None when `load_direct` serves this model, else why not (then `reload_weights` must)."""
    if vllm_config.model_config.quantization is not None or vllm_config.quant_config is not None:
        return f"quantized model ({vllm_config.model_config.quantization})"
    if vllm_config.lora_config is not None:
        return "LoRA layers"
    linear, embedding = _unquantized_methods()
    for name, module in model.named_modules():
        method = getattr(module, "quant_method", None)
        if method is not None and not isinstance(method, (linear, embedding)):
            return f"{name} has {type(method).__name__}"
    return None


def _packed_on_cpu(model: torch.nn.Module) -> tuple[list, list]:
    """(linears, heads) whose forward uses a packed copy of the weight, on the CPU backend only."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return [], []
    linear, embedding = _unquantized_methods()
    linears = [m for m in model.modules() if isinstance(getattr(m, "quant_method", None), linear)
               and not getattr(m, "_cpu_skip_gemm_dispatch", False)]  # such layers keep and use their weight
    embeds = [m for m in model.modules() if isinstance(getattr(m, "quant_method", None), embedding)
              and hasattr(m, "cpu_linear")]
    # only a module the logits are computed with uses its packed copy; models without a ParallelLMHead
    # compute logits with the embedding module itself
    heads = [m for m in embeds if isinstance(m, ParallelLMHead)] or embeds
    return linears, heads


def _stage_weight(layer: torch.nn.Module, cache: dict) -> None:
    """Give a CPU-packed linear (weight dropped after packing) a weight in checkpoint layout to load into."""
    from vllm.model_executor.model_loader.reload.layerwise import get_layerwise_info
    from vllm.model_executor.model_loader.reload.meta import materialize_meta_tensor
    from vllm.model_executor.model_loader.reload.sanitize import restore_layer_refs

    if layer.weight.numel() > 0:  # still there (the packing kept it)
        return
    staged = cache.get(layer)
    if staged is None:
        meta = get_layerwise_info(layer).restore_metadata[0].get("weight")
        if meta is None:
            raise RuntimeError(f"{type(layer).__name__}: vLLM recorded no load-time metadata for its weight")
        staged = restore_layer_refs(materialize_meta_tensor(meta), layer)  # a copy: the record stays sanitized
        # a reload_weights wraps the recorded loader in its layerwise buffering (left there after the reload),
        # which would swallow the load: use the loader underneath
        loader = getattr(staged, "weight_loader", None)
        while getattr(loader, "__name__", "") == "online_process_loader":
            loader = loader.__wrapped__
        if loader is not None:
            staged.weight_loader = loader
        cache[layer] = staged
    del layer.weight
    layer.register_parameter("weight", staged)


@torch.no_grad()
def load_direct(model: torch.nn.Module, weights: Iterable[tuple[str, torch.Tensor]], cache: dict) -> set[str]:
    """Load checkpoint-format `weights` into the live unquantized `model`; `cache` keeps the CPU staging
    weights between calls. Returns the names `load_weights` reports loaded."""
    linears, heads = _packed_on_cpu(model)
    for layer in linears:
        _stage_weight(layer, cache)
    loaded: set[str] = set()
    try:
        loaded = model.load_weights(weights)
    finally:
        # repack the layers whose weight arrived; one that got none (or every layer, if load_weights raised)
        # keeps its packed old values and goes back to packed-only (the engine reports the update incomplete):
        # never a packing of a first-use staging buffer that holds no weights
        names = {m: n for n, m in model.named_modules()}
        for layer in linears + heads:
            if f"{names[layer]}.weight" in loaded or layer in heads and _shares_loaded_weight(layer, model, loaded):
                layer.quant_method.process_weights_after_loading(layer)
            elif layer.weight.numel() and layer in cache:
                del layer.weight  # back to the packed-only state the backend left it in
                layer.register_parameter("weight", torch.nn.Parameter(
                    torch.empty(0, dtype=cache[layer].dtype), requires_grad=False))
    return loaded


def _shares_loaded_weight(head: torch.nn.Module, model: torch.nn.Module, loaded: set[str]) -> bool:
    """A tied LM head loads nothing itself: it is stale when the parameter it shares was loaded."""
    return any(p is head.weight and n in loaded for n, p in model.named_parameters(remove_duplicate=False))
