"""Methods mixed into vLLM's worker (`worker_extension_cls`), reachable by name through `collective_rpc`:
the same code serves the in-process engine and OpenAI servers (`--worker-extension-cls`).

`spro_reload_weights` = vLLM's `reload_weights` + the fix the CPU backend needs for tied embeddings: there
the lm_head holds a prepacked copy of the embedding, which a reload does not refresh, so its packing step
is re-run (on GPU that step does nothing).
"""

from __future__ import annotations


class SproWorkerExtension:
    def spro_reload_weights(self, weights_iterator=None, weights_path: str | None = None,
                            expect_version: int | None = None) -> None:
        """`expect_version`: the folder is a delta sync folder (rollout.weight_sync_delta) that must hold this
        version; it is checked here, on the engine's side, before anything is loaded."""
        if weights_iterator is None and not weights_path:
            raise ValueError("spro_reload_weights needs weights_iterator or weights_path")
        if expect_version is not None:
            from spro_mcore.rollout.weight_sync_folder_delta import verify_delta_folder

            verify_delta_folder(weights_path, int(expect_version))
        self.reload_weights(weights_iterator=weights_iterator, weights_path=weights_path)
        model = self.model_runner.get_model() if hasattr(self.model_runner, "get_model") else self.model_runner.model
        config = getattr(model, "config", None)
        if config is not None and getattr(config, "tie_word_embeddings", False) and hasattr(model, "lm_head"):
            lm_head = model.lm_head
            lm_head.quant_method.process_weights_after_loading(lm_head)
