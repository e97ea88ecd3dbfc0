"""Bad input: the exception families the CLI reports as one line with a non-zero exit (no traceback)."""


class UserError(Exception):
    """Bad input (config, data, checkpoint, engine failure) with a message that says what to do."""


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """UserError plus the areas' own bad-input errors (data rows, engines), imported lazily."""
    from spro_mcore.data.rows import DataError
    from spro_mcore.rollout.engine import EngineError

    return (UserError, DataError, EngineError)
