"""Files shipped inside the package: the tiny base policy (made by ``tools/make_tiny_base.py``)."""

from pathlib import Path

# HF-format Qwen2 policy for the synthetic arithmetic task: config.json, tokenizer files, model.safetensors
TINY_BASE_DIR = Path(__file__).parent / "tiny_base"
# the same shape for the harder chain task (data.synthetic_task=chain): tools/make_tiny_base.py --task chain
TINY_BASE_CHAIN_DIR = Path(__file__).parent / "tiny_base_chain"
