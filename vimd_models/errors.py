"""User-facing errors: the CLI prints these as one line and exits non-zero (no traceback)."""


class UserError(Exception):
    """A mistake in the user's input (config, data folder, checkpoint); message says what and where."""


class Preempted(Exception):
    """A run stopped by a scheduler's signal after writing its checkpoint; ``vimd`` exits with
    ``EXIT_CODE`` (sysexits' EX_TEMPFAIL: run the same command with ``--resume`` to continue)."""
    EXIT_CODE = 75
