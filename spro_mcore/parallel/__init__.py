"""Process groups, the torchrun environment, seeding, and megatron-core on CPU.

Importing this package applies the megatron-core CPU compatibility layer when CUDA is absent.
"""

from spro_mcore.parallel.cpu_compat import apply_cpu_compat
from spro_mcore.parallel.distributed import (
    Layout,
    destroy,
    device,
    free_port,
    init_process_group,
    initialize_model_parallel,
    layout,
    seed_everything,
)

apply_cpu_compat()

__all__ = [
    "Layout", "apply_cpu_compat", "destroy", "device", "free_port", "init_process_group",
    "initialize_model_parallel", "layout", "seed_everything",
]
