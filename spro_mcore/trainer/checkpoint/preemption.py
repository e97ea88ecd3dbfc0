"""Preemption signals (SIGTERM from Slurm/Kubernetes/torchrun, SIGINT from Ctrl-C) turned into a flag that the
loop checks between steps, so the run stops at a step boundary where a checkpoint is consistent.

All ranks must stop after the SAME step (a rank that stops alone leaves the others in a collective), so
the flag is agreed with an all-reduce: `any_rank(flag)`. A second SIGINT interrupts at once (impatient user);
a second SIGTERM is ignored (the grace period is for saving).
"""

from __future__ import annotations

import logging
import signal

import torch.distributed as dist

from spro_mcore.parallel import collectives

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionFlag:
    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for s in SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)

    def uninstall(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            log.warning("received %s: stopping after the current step and saving a checkpoint",
                        signal.Signals(signum).name)
        self.signum = signum


def any_rank(flag: bool) -> bool:
    """Collective: True on every rank when `flag` is True on any rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    return collectives.any_rank(flag)
