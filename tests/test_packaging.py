"""A non-editable install (a wheel) runs every command away from the checkout: the metric modules and the Space are
in the package, and nothing is looked up relative to the current folder."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_wheel_installed_elsewhere_has_the_metrics_and_the_space(tmp_path):
    wheels, target, elsewhere, source = (tmp_path / name for name in ("wheels", "site", "elsewhere", "source"))
    elsewhere.mkdir()
    # Built from a copy: setuptools builds in the source tree and would leave build/ in the checkout.
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "outputs", "build", "*.egg-info"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(wheels), str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    [wheel] = wheels.glob("fusar_gpt-*.whl")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(target)}  # before the editable install's finder: the wheel's copies win
    check = (
        "import evaluate, evaluate_bench, publish; from importlib import resources; "
        "from evaluation.scoring import METRICS_DIR; "
        f"assert evaluate_bench.__file__.startswith({str(target)!r}), evaluate_bench.__file__; "
        f"assert str(METRICS_DIR).startswith({str(target)!r}); "
        "space = resources.files('fusar_space'); "
        "assert all((space / name).is_file() for name in ('app.py', 'fusar_demo.py', 'README.md', 'requirements.txt')); "
        "names = sorted(p.name for p in METRICS_DIR.glob('sar_*')); assert len(names) == 6, names; "
        "[evaluate.load(str(METRICS_DIR / n)).compute(predictions=['2'], references=['2']) for n in names]; "
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", check], cwd=elsewhere, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
    simulate = subprocess.run([str(target / "bin" / "fusar-data"), "simulate", "--scenes", "3", "--output", "data"],
                              cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert simulate.returncode == 0 and (elsewhere / "data" / "README.md").is_file(), simulate.stderr[-3000:]
