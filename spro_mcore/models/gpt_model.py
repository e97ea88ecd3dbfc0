"""megatron-core's GPTModel, able to hand back its final hidden states instead of logits.

The log-prob kernel (`models/logprob_kernel.py`) applies the output layer itself, chunk by chunk, so the
full [tokens, vocab] logits never exist. `model(..., output_hidden=True)` returns the decoder output after
the final norm, [S, B, H] (sequence first, as Megatron keeps it), on the last pipeline stage; everything
else (parameters, sharded_state_dict, pipeline stages, wrappers such as DDP/Float16Module, which pass
keyword arguments through) is GPTModel's own.
"""

from __future__ import annotations

from megatron.core.models.gpt import GPTModel


class SproGPTModel(GPTModel):
    _output_hidden = False

    def forward(self, input_ids, position_ids, attention_mask, *args, output_hidden: bool = False, **kwargs):
        self._output_hidden = output_hidden
        try:
            return super().forward(input_ids, position_ids, attention_mask, *args, **kwargs)
        finally:
            self._output_hidden = False

    def _postprocess(self, hidden_states, *args, **kwargs):
        if self._output_hidden and self.post_process:
            if self.mtp_process:
                raise NotImplementedError("output_hidden with multi-token prediction layers")
            return hidden_states
        return super()._postprocess(hidden_states, *args, **kwargs)

    def output_weight(self):
        """The (TP-sharded) output projection [V/tp, H] on the last stage: the embedding when tied."""
        if self.share_embeddings_and_output_weights:
            return self.shared_embedding_or_output_weight()
        return self.output_layer.weight
