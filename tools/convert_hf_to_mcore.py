"""HF safetensors -> Megatron dist checkpoint.

    torchrun --nproc-per-node T*P tools/convert_hf_to_mcore.py --hf-dir IN --out-dir OUT --tp T --pp P
"""

import sys

if __name__ == "__main__":  # the checkpoint writer spawns a process that re-imports __main__
    from spro_mcore.models.convert import tool_main

    sys.exit(tool_main("hf-to-mcore"))
