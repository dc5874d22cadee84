"""User-facing errors: what the command-line entry points turn into one clear line and a non-zero exit
(scripts/command_line.py)."""

from pathlib import Path


class SLMError(Exception):
    """A problem with the user's input or environment (bad path, bad config, ...), not a bug in slm_hf.

    Raise it with a message that says what was wrong and, where possible, how to fix it. The scripts print
    ``error: <message>`` on stderr and exit with status 2, without a traceback.

    `quiet=True` marks an error that another process of the same run reports: the scripts exit with status 2
    without printing it again.
    """

    def __init__(self, message: str = "", *, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet


def folder_problem(path: Path) -> str | None:
    """Why `path` cannot be a folder the user named ("does not exist", "is a file, not a folder"), or None when it
    is one: the start of the message that names the cause, for every folder argument."""
    if path.is_dir():
        return None
    return "is a file, not a folder" if path.exists() else "does not exist"
