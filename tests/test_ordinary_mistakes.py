"""A new user's ordinary mistakes, through the installed commands as a shell runs them: each is refused at once in one
line (exit 2), before anything is written, and nothing already on disk changes."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(sys.executable).parent


def script(name, *args, cwd=None, timeout=600):
    result = subprocess.run([str(SCRIPTS / name), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                            cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return result.returncode, result.stderr


def refused(result, prog, message):
    code, err = result
    assert code == 2, err
    assert "Traceback" not in err and f"{prog}: error: " in err and message in err, err


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_simulate_checks_both_of_its_folders_before_writing_either(tmp_path):
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "notes.txt").write_text("mine")
    (tmp_path / "u.raw").mkdir()
    (tmp_path / "u.raw" / "scenes.jsonl").write_text("my own scenes\n")
    before = tree(tmp_path)
    refused(script("fusar-data", "simulate", "--scenes", "2", "--output", tmp_path / "u"), "fusar-data",
            "exists and is not empty")
    (tmp_path / "u" / "notes.txt").unlink()  # the dataset folder is free now; the .raw sibling is still the user's
    refused(script("fusar-data", "simulate", "--scenes", "2", "--output", tmp_path / "u"), "fusar-data",
            "u.raw: it is not a folder fusar-data simulate wrote")
    assert tree(tmp_path) == {k: v for k, v in before.items() if k != "u/notes.txt"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u", "u.raw"]  # no .partial either


def test_simulate_rewrites_its_own_raw_inputs_on_a_rerun(tmp_path):
    output = tmp_path / "sim"
    assert script("fusar-data", "simulate", "--scenes", "2", "--output", output)[0] == 0
    first = tree(tmp_path / "sim.raw")
    assert "simulation.json" in first and "scenes.jsonl" in first
    code, err = script("fusar-data", "simulate", "--scenes", "2", "--output", output, "--overwrite")
    assert code == 0, err
    assert tree(tmp_path / "sim.raw") == first


def test_fusar_main_checks_every_output_before_any_work(tmp_path):
    (tmp_path / "mainx" / "data").mkdir(parents=True)
    (tmp_path / "mainx" / "data" / "mine.csv").write_text("a,b\n")
    refused(script("fusar-main", "--output", tmp_path / "mainx"), "fusar-main", "mine.csv")
    assert tree(tmp_path) == {"mainx/data/mine.csv": b"a,b\n"}  # no mainx/data.raw
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("\\begin{document}")
    refused(script("fusar-main", "--output", tmp_path / "other"), "fusar-main", "thesis.tex")
    for scenes in ("--scenes", "--scene"):  # no abbreviation: --scene goes to fusar-train, which does not know it
        code, err = script("fusar-main", "--output", tmp_path / "small", scenes, "5")
        assert code == 2 and "Traceback" not in err, err
    refused(script("fusar-main", "--output", tmp_path / "small", "--scenes", "5"), "fusar-main",
            "too few for a held-out test split")
    assert not (tmp_path / "small").exists()
