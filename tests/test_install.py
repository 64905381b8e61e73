"""The install a new machine makes: the README's commands take the tested set (constraints.txt), CI runs exactly the
README's test command, and the tested set is one that pyproject's ranges allow."""

import importlib.util
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CONSTRAINTS = (ROOT / "constraints.txt").read_text()


def lock_module():
    spec = importlib.util.spec_from_file_location("ci_lock", ROOT / ".ci" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_command(comment: str) -> str:
    """The README's quick-start command whose trailing comment starts with `comment`."""
    [line] = [line for line in README.splitlines() if re.search(rf"\s+# {comment}", line)]
    return re.split(r"\s+# ", line)[0]


def test_ci_runs_the_readmes_test_command_in_a_new_environment():
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"test_command='{readme_command('the tests')}'" in ci
    assert 'rm -rf "$venv" && python3 -m venv "$venv"' in ci  # never the packages of an earlier install
    for command in (readme_command("the tests"), readme_command("the main job")):
        assert all(" -c constraints.txt " in part for part in command.split("&&") if "pip install" in part), command


def test_the_tested_set_is_inside_the_ranges_and_covers_the_install():
    pins = lock_module().pins(CONSTRAINTS)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = [Requirement(text) for text in [*project["dependencies"], *project["optional-dependencies"]["dev"],
                                               *project["optional-dependencies"]["lmms"]]]
    for requirement in required:
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"constraints.txt pins no {requirement.name}: run .ci/run --newest"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt: {name}=={pins[name]} is outside pyproject's {requirement}")


def test_the_readme_says_which_set_was_tested_and_when():
    line = lock_module().readme_line(CONSTRAINTS)
    assert line in README.splitlines(), f"README.md should say, as .ci/lock.py writes it:\n{line}"
