"""User-facing errors: what the command-line entry points turn into one clear line and a non-zero exit
(scripts/command_line.py)."""


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
