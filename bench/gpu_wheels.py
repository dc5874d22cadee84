"""Download, here, the wheels the GPU machine needs to run bench/gpu_check.py: it reaches no package registry.

    python bench/gpu_wheels.py [--dest .whl/gpu] [--python-version 3.12] [--with-torch] [--print]

The project's runtime dependencies and everything they need, at the versions installed in this environment (the
ones the suite passes with), as wheels for Linux x86-64 and the GPU machine's Python, into an ignored folder
(.whl/ is in .gitignore). Left out: what the GPU machine's image already holds at a version that works and that is
too big to carry (`ON_DEVICE`: torch with its CUDA libraries, numpy, pyarrow, pandas, matplotlib). `--with-torch`
adds the CUDA torch wheel of this environment's torch version with its CUDA libraries (several GB: more than the
device machine's 64 MiB carry limit, for a machine reached another way). `--print` prints the pip command only.
docs/benchmarks.md gives the command the device machine runs with them.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
ON_DEVICE = {"torch", "numpy", "pyarrow", "pandas", "matplotlib"}
# pip matches a manylinux tag exactly: the tags these wheels come with (the device README's list).
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_24_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64",
             "manylinux_2_35_x86_64")


def normalized(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def runtime_pins() -> list[str]:
    """`name==version` for the project's runtime dependencies and theirs, as installed here, less `ON_DEVICE`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(line).name for line in project["dependencies"]]
    pins: dict[str, str] = {}
    while todo:
        name = todo.pop()
        if normalized(name) in pins or normalized(name) in ON_DEVICE:
            continue
        try:
            pins[normalized(name)] = version(name)
        except PackageNotFoundError:
            raise SystemExit(f"error: {name} is not installed here; run `make setup` first") from None
        for line in requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return [f"{name}=={pins[name]}" for name in sorted(pins)]


def pip_download(pins: list[str], dest: Path, python_version: str, deps: bool = False) -> list[str]:
    platforms = [word for platform in PLATFORMS for word in ("--platform", platform)]
    return [sys.executable, "-m", "pip", "download", *([] if deps else ["--no-deps"]), "--only-binary=:all:",
            "--python-version", python_version, "--implementation", "cp", *platforms, "--dest", str(dest), *pins]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl" / "gpu")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (its python3: 3.12)")
    parser.add_argument("--with-torch", action="store_true", help="also this torch version's CUDA wheel (GBs)")
    parser.add_argument("--print", action="store_true", help="print the pip commands, download nothing")
    args = parser.parse_args()
    commands = [pip_download(runtime_pins(), args.dest, args.python_version)]
    if args.with_torch:
        torch = version("torch").split("+")[0]  # this environment's may be a +cpu build: the GPU one has no suffix
        commands.append(pip_download([f"torch=={torch}"], args.dest, args.python_version, deps=True))
    for command in commands:
        print(shlex.join(command), flush=True)
        if not args.print and subprocess.run(command).returncode:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
