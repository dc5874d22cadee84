"""What the scripts share, with the standard library only: they parse their arguments before importing slm_hf.

Importing slm_hf imports torch and transformers (seconds). A script's `--help`, and its refusal of a bad argument,
answer before that: each script builds its parser with `ArgumentParser` and imports the library inside `main`, after
parsing. `exit_on_error` turns the library's `SLMError` (bad input, named in one line) into that line on standard
error and exit status 2, and Ctrl-C into exit status 130, without a traceback.
"""

import argparse
import functools
import sys


class ArgumentParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose usage errors (a missing flag, a value of the wrong type or out of the
    choices) read like every other bad input: one line `error: <message>` on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def exit_on_error(main):
    """Decorate a script's `main()`: an `SLMError` becomes one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except Exception as error:
            errors = sys.modules.get("slm_hf.errors")  # imported by then if the library raised it
            if errors is None or not isinstance(error, errors.SLMError):
                raise
            if not error.quiet:  # another process of the same run reports it
                print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    return wrapper
