"""Free TCP ports on 127.0.0.1 for tests that start servers or rendezvous: taken from the operating system, retried
when another process takes one first.

The OS hands out a free port (bind to port 0), but a program under test can only be told a number: between the
test releasing the port and the program binding it, another process may take it. So every test that needs a port
starts its program through `fresh_ports()` and, when the program failed because the port was in use
(`port_was_taken`), starts it again on the next one; `run_on_a_free_port` does that for a command run to its end.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator

ATTEMPTS = 3
# How a port that was taken first shows in the output of Python (OSError), torch.distributed's TCPStore and gloo.
IN_USE = ("address already in use", "eaddrinuse", "errno 98")


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (the OS chose it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_ports(attempts: int = ATTEMPTS) -> Iterator[int]:
    """`attempts` free ports, one at a time: take the next only when the program lost the last to another one."""
    for _ in range(attempts):
        yield free_port()


def port_was_taken(output: str) -> bool:
    """Whether a program's output says it could not bind its port because another process held it."""
    return any(sign in output.lower() for sign in IN_USE)


def run_on_a_free_port(start: Callable[[int], subprocess.CompletedProcess]) -> subprocess.CompletedProcess:
    """`start(port)` (which runs a program to its end, text output captured), on another port while the last one
    was taken first; an AssertionError when every attempt lost its port."""
    for port in fresh_ports():
        result = start(port)
        if not port_was_taken(f"{result.stdout}\n{result.stderr}"):
            return result
    raise AssertionError(f"{ATTEMPTS} ports in a row were taken by other processes before the program bound them")
