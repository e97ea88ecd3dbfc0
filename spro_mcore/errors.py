"""The one exception family for bad input: the CLI prints its message as one line and exits non-zero."""


class UserError(Exception):
    """Bad input (config, data, checkpoint, engine failure) with a message that says what to do."""
