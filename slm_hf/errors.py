"""User-facing errors: what the command-line entry points turn into one clear line and a non-zero exit."""

import argparse
import functools
import sys


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


def exit_on_error(main):
    """Decorate a script's `main()`: an `SLMError` becomes one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except SLMError as error:
            if not error.quiet:
                print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose usage errors (a missing flag, a value of the wrong type or out of the
    choices) read like every other bad input: one line `error: <message>` on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
