"""What every console script shares: a user's mistake becomes one line on stderr and exit status 2, never a traceback.

    @command("fusar-eval")
    def main(argv=None): ...

A user's mistake is anything the inputs can cause: our own ValueErrors (they name the file, field and expected
value), files that are missing or unreadable (OSError), unsafe or corrupt files (pickles, truncated safetensors,
decompression bombs), an image too large for the memory budget, the Hub or network failing. Anything else is a bug:
one line too, exit status 1, and `FUSAR_TRACEBACK=1` shows where it happened. Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import functools
import os
import pickle
import re
import sys
from pathlib import Path

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
NETWORK_MODULES = ("httpx", "httpx2", "requests", "urllib3")  # huggingface_hub's HTTP stack, by release


def user_error_message(error: BaseException) -> str | None:
    """The line to show for an error the user's inputs caused; None for a bug."""
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"{error.filename}: no such file or folder"
    if isinstance(error, PermissionError) and error.filename:
        return f"{error.filename}: permission denied"
    if isinstance(error, (ValueError, OSError)):
        return str(error) or type(error).__name__
    if isinstance(error, pickle.UnpicklingError):
        return f"refused a pickled or corrupt file ({error})"
    if isinstance(error, MemoryError):
        return "out of memory: the inputs are larger than this machine can hold (see FUSAR_MAX_IMAGE_BYTES)"
    names = {cls.__name__ for cls in type(error).__mro__}
    if "SafetensorError" in names or "DecompressionBombError" in names:
        return f"a corrupt or oversized file ({error})"
    if any(cls.__module__.split(".")[0] in NETWORK_MODULES for cls in type(error).__mro__):
        return f"cannot reach the Hub or server ({type(error).__name__}: {error}); check HF_ENDPOINT and the network"
    return None


def command(prog: str):
    """Decorate a console script's `main(argv=None)`: its return value (None = 0) is the exit status; errors are
    reported as described in this module's docstring."""

    def decorate(main):
        @functools.wraps(main)
        def wrapper(argv=None):
            try:
                return main(argv) or 0
            except KeyboardInterrupt:
                print(f"{prog}: interrupted (README, Failure behaviour: what each command keeps and how to go on)",
                      file=sys.stderr)
                return 130
            except Exception as error:
                if os.environ.get("FUSAR_TRACEBACK"):
                    raise
                message = user_error_message(error)
                if message is not None:
                    print(f"{prog}: error: {message}", file=sys.stderr)
                    return 2
                print(f"{prog}: internal error ({type(error).__name__}: {error}); please report it, with the "
                      "traceback that FUSAR_TRACEBACK=1 prints", file=sys.stderr)
                return 1

        return wrapper

    return decorate


def local_or_hub_id(name: str, what: str) -> str:
    """`name` when it is a local file or folder or has the form of a Hub id (`user/name`). Anything else is a
    mistyped path: refused at once, rather than after the Hub client's retries for a repository that cannot exist."""
    if Path(name).expanduser().exists():
        return name
    if name.startswith((".", "/", "~")) or not HUB_ID.fullmatch(name):
        raise ValueError(f"{what} {name}: no such file or folder (and not a Hub id, which has the form user/name)")
    return name


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    return _bounded_int(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    return _bounded_int(text, 0)


def _bounded_int(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer of at least {low}, got {value}")
    return value
