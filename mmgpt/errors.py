"""The error users see as one line: bad input named by its file, line or key (no traceback)."""


class UserError(ValueError):
    """Bad input from the user: a config key, a file, a command-line value.

    The commands (:func:`mmgpt.cli.common.user_errors`) print its message as one line and exit with status 1;
    ``MMGPT_TRACEBACK=1`` shows the traceback as well.
    """


def load_error_reason(e: BaseException) -> str:
    """The line of a loading error that says what was refused: for ``torch.load(weights_only=True)`` the one naming
    the global a pickle asked for (its first lines only suggest turning the protection off), else the first line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return next((line for line in lines if "GLOBAL" in line), lines[0] if lines else type(e).__name__)


class CheckpointError(UserError):
    """A file that is not a usable mmgpt checkpoint, or one that names something mmgpt does not build."""
