"""Fault rules that need no process group: when a streak of skipped (non-finite) updates stops the run.
(kill -9, SIGTERM, corrupt checkpoints and engine failures are exercised for real in test_resume_e2e.py and
test_checkpoint_dist.py.)"""

from __future__ import annotations

import pytest

from spro_mcore.trainer.checkpoint import nonfinite_in_row


@pytest.mark.unit
def test_streak_grows_only_over_fully_skipped_steps():
    streak = 0
    for skipped in (1, 1, 0, 1):  # one update per step
        streak = nonfinite_in_row(streak, skipped, 1)
    assert streak == 1  # the applied update in step 3 ended the first streak of 2
    assert nonfinite_in_row(2, 4, 4) == 6  # a step of 4 mini-batch updates, all skipped
    assert nonfinite_in_row(5, 3, 4) == 0  # one of them applied: the streak is broken
