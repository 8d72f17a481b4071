"""User-facing errors: the CLI prints these as one line and exits non-zero (no traceback)."""


class UserError(Exception):
    """A mistake in the user's input (config, data folder, checkpoint); message says what and where."""
