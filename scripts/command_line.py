"""What the scripts share, with the standard library only: they parse their arguments before importing slm_hf.

Importing slm_hf imports torch and transformers (seconds). A script's `--help`, and its refusal of a bad argument,
answer before that: each script builds its parser with `ArgumentParser` and imports the library inside `main`, after
parsing; the choices it offers come from the library's standard-library-only modules, loaded by `library_module`.
`exit_on_error` turns the library's `SLMError` (bad input, named in one line) into that line on standard
error and exit status 2, and Ctrl-C into exit status 130, without a traceback.
"""

import argparse
import functools
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class ArgumentParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose usage errors (a missing flag, a value of the wrong type or out of the
    choices) read like every other bad input: one line `error: <message>` on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def library_module(path: str):
    """Load one standard-library-only module of the library from its file, e.g. `library_module("slm_hf/choices.py")`,
    without importing the package: slm_hf/__init__.py registers the model with transformers' Auto classes, which
    imports torch (seconds), and `--help` must not wait for that. tests/test_entry_points.py checks that each module
    loaded so imports nothing but the standard library."""
    spec = importlib.util.spec_from_file_location(f"command_line.{Path(path).stem}", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
