"""Methods mixed into vLLM's worker (`worker_extension_cls`), reachable by name through `collective_rpc`:
the same code serves the in-process engine and OpenAI servers (`--worker-extension-cls`).

`spro_reload_weights` updates the live model in place, by one of two paths:
- direct (unquantized models, `vllm_direct_load.py`): the live model's `load_weights`, one copy per tensor,
  then only the CPU backend's repacking of linears and LM head;
- reload (everything else: quantized / fp8 engines, LoRA, MoE): vLLM's `reload_weights`, plus the fix the CPU
  backend needs for tied embeddings: there the lm_head holds a prepacked copy of the embedding, which a reload
  does not refresh, so its packing step is re-run (on GPU that step does nothing).
"""

from __future__ import annotations

PATHS = ("auto", "direct", "reload")


class SproWorkerExtension:
    def spro_reload_weights(self, weights_iterator=None, weights_path: str | None = None,
                            expect_version: int | None = None, path: str = "auto") -> str:
        """`expect_version`: the folder is a delta sync folder (rollout.weight_sync_delta) that must hold this
        version; it is checked here, on the engine's side, before anything is loaded. `path`: auto (direct
        where the model allows it), direct (refused where it does not), reload (vLLM's reload_weights; the
        benchmark's baseline). Returns the path taken."""
        from vllm.config import set_current_vllm_config

        from spro_mcore.rollout.vllm_direct_load import direct_load_blocker, load_direct

        if weights_iterator is None and not weights_path:
            raise ValueError("spro_reload_weights needs weights_iterator or weights_path")
        if path not in PATHS:
            raise ValueError(f"spro_reload_weights: path={path!r}; use one of {', '.join(PATHS)}")
        if expect_version is not None:
            from spro_mcore.rollout.weight_sync_folder_delta import verify_delta_folder

            verify_delta_folder(weights_path, int(expect_version))
        model = self.model_runner.get_model() if hasattr(self.model_runner, "get_model") else self.model_runner.model
        blocker = direct_load_blocker(model, self.vllm_config) if path != "reload" else "asked for"
        if path == "direct" and blocker:
            raise ValueError(f"spro_reload_weights: the direct path cannot serve this model: {blocker}")
        if blocker:
            self.reload_weights(weights_iterator=weights_iterator, weights_path=weights_path)
            config = getattr(model, "config", None)
            if config is not None and getattr(config, "tie_word_embeddings", False) and hasattr(model, "lm_head"):
                lm_head = model.lm_head
                lm_head.quant_method.process_weights_after_loading(lm_head)
            return "reload"
        if weights_iterator is None:
            weights_iterator = _folder_weights(weights_path)
        if not hasattr(self, "_spro_staging"):
            self._spro_staging = {}
        with set_current_vllm_config(self.vllm_config):
            load_direct(model, weights_iterator, self._spro_staging)
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):  # as reload_weights does
            if hasattr(self.model_runner, reset):
                getattr(self.model_runner, reset)()
        return "direct"


def _folder_weights(folder: str):
    """The tensors of a safetensors folder (the sync transports write one), file by file: the files its index
    names when it has one (a delta folder's index is the truth), else every *.safetensors file."""
    from pathlib import Path

    from vllm.model_executor.model_loader.weight_utils import safetensors_weights_iterator

    from spro_mcore.rollout.weight_sync_folder import read_index

    index = read_index(folder)
    if index is not None:
        files = sorted({str(Path(folder) / f) for f in index["weight_map"].values()})
    else:
        files = sorted(str(p) for p in Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in weight folder {folder}")
    return safetensors_weights_iterator(files, use_tqdm_on_load=False)
