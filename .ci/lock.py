"""Record the environment the suite just passed in as the tested set: `constraints.txt` and the README's line on it.

    .ci/run --newest    # the suite on the newest releases the pins allow; when it passes, it runs this in its venv

Both README commands install with `-c constraints.txt`, so a new user gets exactly what passed here; `pip install
fusar-gpt` keeps pyproject's ranges. Local version labels are dropped (`torch==2.13.0`, not `2.13.0+cpu`) so that a
CUDA build of the same release satisfies the file too.
"""

from __future__ import annotations

import datetime
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS, README = ROOT / "constraints.txt", ROOT / "README.md"
SHOWN = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "huggingface-hub", "bitsandbytes", "kernels")
README_LINE = re.compile(r"^\*\*Tested set\*\*.*$", flags=re.MULTILINE)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """{normalised name: version} of a constraints or `pip freeze` text."""
    found = (re.fullmatch(r"([A-Za-z0-9][\w.-]*)==([^\s;+]+)(?:\+\S*)?", line.strip()) for line in text.splitlines())
    return {normalise(match[1]): match[2] for match in found if match}


def readme_line(constraints: str) -> str:
    """The README's sentence on the tested set, from the file itself (a test checks the two agree)."""
    versions, passed = pins(constraints), re.search(r"passed on (\S+)", constraints)[1]
    shown = ", ".join(f"{name} {versions[name]}" for name in SHOWN if name in versions)
    return (f"**Tested set** (`constraints.txt`, {len(versions)} packages; last passed {passed} by `.ci/run --newest`): "
            f"{shown}.")


def main() -> None:
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], check=True,
                            capture_output=True, text=True).stdout
    versions = pins(frozen)
    if "transformers" not in versions:
        sys.exit(f"{sys.executable} has no transformers: run this in the environment the suite passed in")
    header = [
        "# The tested set: the exact releases the README's test command last passed with. Made by .ci/lock.py, not by",
        f"# hand; passed on {datetime.date.today().isoformat()} with Python {platform.python_version()} "
        f"({platform.system()} {platform.machine()}).",
    ]
    text = "\n".join(header + [f"{name}=={version}" for name, version in sorted(versions.items())]) + "\n"
    readme = README.read_text()
    if not README_LINE.search(readme):
        sys.exit(f"{README}: no line starting '**Tested set**' to update")
    CONSTRAINTS.write_text(text)
    README.write_text(README_LINE.sub(lambda _: readme_line(text), readme, count=1))
    print(f"{CONSTRAINTS.name}: {len(versions)} packages; README.md: {readme_line(text)}")


if __name__ == "__main__":
    main()
