"""The policy seam (`interface.Policy`) and its megatron-core implementation (`megatron_policy`). Only the
implementation, `spro_mcore/models` and `spro_mcore/parallel` import megatron."""

from spro_mcore.trainer.policy.interface import Policy

__all__ = ["Policy"]
