"""Runs shared by several test files (each is a real `spro-mcore train`; sharing one saves its start-up)."""

import pytest

from tests.trainer.e2e_helpers import metrics, train

# three steps, no eval: the async_mode=off reference of the one_step_off and bounded tests
ASYNC_STEPS = ["trainer.total_steps=3", "trainer.eval_interval=0"]


@pytest.fixture(scope="session")
def async_off_run(tmp_path_factory) -> dict[int, dict]:
    """Metrics rows (by step) of trainer.async_mode=off on ASYNC_STEPS."""
    out = tmp_path_factory.mktemp("async_off") / "run"
    train(out, *ASYNC_STEPS)
    return metrics(out)
