"""transformers' own `ModelTesterMixin` and `ConfigTester`, fetched from the transformers source distribution on PyPI.

The sdist ships `tests/test_modeling_common.py` but not the two modules it imports its other mixins from
(`tests/generation/test_utils.py`, `tests/exporters/test_export.py`): those are replaced by empty mixins, so the
generation and export tests are not part of what runs here (they are not on PyPI to be had).

The sources are fetched once with pip (`pip download --no-binary :all:` of the installed transformers version) and
cached under `$XDG_CACHE_HOME/fusar-gpt/`; `FUSAR_TRANSFORMERS_SDIST` may point at a downloaded `.tar.gz` instead.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import transformers

PACKAGE = "transformers_common_tests"


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "fusar-gpt" / f"transformers-{transformers.__version__}-tests"


def fetch_tests() -> Path:
    """The folder of transformers' top-level test modules for the installed version, fetched once."""
    target = cache_dir()
    if (target / "test_modeling_common.py").is_file():
        (target / "__init__.py").touch()  # see below; caches made before the ConfigTester ran lack it
        return target
    with tempfile.TemporaryDirectory() as scratch:
        sdist = os.environ.get("FUSAR_TRANSFORMERS_SDIST")
        if sdist is None:
            command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                       f"transformers=={transformers.__version__}", "-d", scratch]
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
            found = list(Path(scratch).glob("transformers-*.tar.gz"))
            if done.returncode != 0 or not found:
                raise RuntimeError(f"pip could not download the transformers {transformers.__version__} sdist: "
                                   f"{done.stderr.strip()[-300:]}")
            sdist = found[0]
        unpacked = Path(scratch) / "tests"
        unpacked.mkdir()
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts
                if member.isfile() and len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py"):
                    member.name = parts[2]
                    archive.extract(member, unpacked, filter="data")
        if not (unpacked / "test_modeling_common.py").is_file():
            raise RuntimeError(f"{sdist} holds no tests/test_modeling_common.py")
        # test_configuration_common runs transformers' `direct_transformers_import` on its own folder, which executes
        # that folder's `__init__.py` (empty in transformers' repository, absent from the sdist).
        (unpacked / "__init__.py").touch()
        target.parent.mkdir(parents=True, exist_ok=True)
        # Whole or not at all: a fetch killed half-way leaves nothing that looks like a cache.
        staged = Path(tempfile.mkdtemp(dir=target.parent))
        shutil.copytree(unpacked, staged, dirs_exist_ok=True)
        try:
            staged.rename(target)
        except OSError:  # another test run cached it first
            shutil.rmtree(staged)
            if not (target / "test_modeling_common.py").is_file():
                raise
    return target


def _module(name: str, path: list[str] | None = None, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    if path is not None:
        module.__path__ = path
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def import_modeling_common():
    """`test_modeling_common`, importable as `transformers_common_tests.test_modeling_common`."""
    folder = fetch_tests()
    if PACKAGE not in sys.modules:
        _module(PACKAGE, [str(folder)])
        # Not in the sdist: empty stand-ins, so ModelTesterMixin imports (its generation and export tests do not run).
        _module(f"{PACKAGE}.generation", [])
        _module(f"{PACKAGE}.generation.test_utils", GenerationTesterMixin=type("GenerationTesterMixin", (), {}))
        _module(f"{PACKAGE}.exporters", [])
        _module(f"{PACKAGE}.exporters.test_export", ExportTesterMixin=type("ExportTesterMixin", (), {}))
        # `test_configuration_common` takes `config_common_kwargs` from `tests/utils/`, which the sdist lacks; only
        # `check_config_arguments_init` reads it, and that check returns before reading it for a composite config.
        _module(f"{PACKAGE}.utils", [])
        _module(f"{PACKAGE}.utils.test_configuration_utils", config_common_kwargs={})
    return importlib.import_module(f"{PACKAGE}.test_modeling_common")


def import_configuration_common():
    """`test_configuration_common` (its `ConfigTester`), from the same sources."""
    import_modeling_common()
    return importlib.import_module(f"{PACKAGE}.test_configuration_common")
