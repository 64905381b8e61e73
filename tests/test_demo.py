"""The README's main command, run in-process on a temporary folder."""

from modeling_fusar.demo import main


def test_demo_runs_end_to_end(tmp_path, capsys):
    main(["--output", str(tmp_path / "demo"), "--max-new-tokens", "4"])
    printed = capsys.readouterr().out
    assert "same answer: True" in printed
    assert (tmp_path / "demo" / "model.safetensors").is_file() and (tmp_path / "demo" / "processor_config.json").is_file()
