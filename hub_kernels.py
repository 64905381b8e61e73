"""No Hub kernel is looked up unless the user asks: importing this module keeps bitsandbytes' lookup local.

bitsandbytes (0.49 and later), imported on a CPU with AVX512-BF16, asks the `kernels` package for the Hub kernel
`kernels-community/quantization-bitsandbytes` (its fused 4-bit CPU matmul), and peft imports bitsandbytes whenever it
is installed. transformers 5.25 made `kernels` a dependency of its own, so from then on every command that touches
peft first asked the Hub whether the kernel's publisher is trusted and downloaded compiled code; without internet it
printed a warning telling the user to `pip install kernels`, on every run.

Every console script imports this module before anything imports peft. Then bitsandbytes, whenever it is imported,
looks in the local cache only: a kernel downloaded earlier is used, else bitsandbytes runs its own CPU code (the
same 4-bit layers, slower matmuls), and neither case prints anything. `FUSAR_HUB_KERNELS=1` lets it reach the Hub
as it would on its own (the README says what that fetches and the trust it needs).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys

QUIET = ("bitsandbytes.backends.cpu.ops", "kernels")  # the loggers of a lookup nobody asked for


@contextlib.contextmanager
def local_kernel_lookup():
    """`kernels` reads huggingface_hub's offline switch when it is called: on, it resolves from the cache only."""
    from huggingface_hub import constants

    offline, levels = constants.HF_HUB_OFFLINE, {name: logging.getLogger(name).level for name in QUIET}
    constants.HF_HUB_OFFLINE = True
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = offline
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class _BitsandbytesFinder(importlib.abc.MetaPathFinder):
    """Finds bitsandbytes as Python would, and runs its first import inside `local_kernel_lookup`."""

    def find_spec(self, name, path=None, target=None):
        if name != "bitsandbytes":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            run = spec.loader.exec_module

            def exec_module(module):
                with local_kernel_lookup():
                    run(module)

            spec.loader.exec_module = exec_module
        return spec


if os.environ.get("FUSAR_HUB_KERNELS") != "1" and "bitsandbytes" not in sys.modules:
    if not any(isinstance(finder, _BitsandbytesFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _BitsandbytesFinder())
