"""Bad input: the exception families the CLI reports as one line with a non-zero exit (no traceback)."""

import sys


class UserError(Exception):
    """Bad input (config, data, checkpoint, engine failure) with a message that says what to do."""


# the areas' own bad-input errors that do not derive from UserError: (module, class name)
_AREA_ERRORS = (("spro_mcore.data.rows", "DataError"), ("spro_mcore.rollout.engine", "EngineError"))


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """UserError plus the areas' own bad-input errors. Only modules already imported can have raised theirs,
    so nothing is imported here (a config error stays a sub-second exit, without torch)."""
    found = [getattr(sys.modules[m], name) for m, name in _AREA_ERRORS if m in sys.modules]
    return (UserError, *found)
