"""Megatron dist checkpoint -> HF safetensors (config and tokenizer files copied from the template).

    [torchrun --nproc-per-node T*P] tools/convert_mcore_to_hf.py --mcore-dir OUT --hf-template IN --out-dir HF [--tp T --pp P]
"""

import sys

if __name__ == "__main__":
    from spro_mcore.models.convert import tool_main

    sys.exit(tool_main("mcore-to-hf"))
