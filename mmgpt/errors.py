"""The error users see as one line: bad input named by its file, line or key (no traceback)."""


class UserError(ValueError):
    """Bad input from the user: a config key, a file, a command-line value.

    The commands (:func:`mmgpt.cli.common.user_errors`) print its message as one line and exit with status 1;
    ``MMGPT_TRACEBACK=1`` shows the traceback as well.
    """


class CheckpointError(UserError):
    """A file that is not a usable mmgpt checkpoint, or one that names something mmgpt does not build."""
