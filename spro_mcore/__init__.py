"""spro-mcore: SPRO RL post-training on Megatron-core."""
__version__ = "0.1.0"
