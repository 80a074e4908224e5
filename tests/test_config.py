"""`--config FILE` (YAML or TOML) on every command, and `--print-config`.

A config file is the command line written down: the same run from a file gives the same tensors as from
flags; a flag given beside the file wins; a bad key, type or value is one line naming the key, the file and
(YAML) the line; `--print-config` writes what a command would run with, in a form `--config` reads back.
"""

from __future__ import annotations

import json

import pytest
import yaml
from bitwise import tensor_sha256
from conftest import assert_one_line_error, invoke

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def _cli(*args: object) -> tuple[int, str, str]:
    r = invoke(*args)
    return r.exit_code, r.stdout, r.stderr


def _printed(*args: object) -> dict:
    code, out, err = _cli(*args, "--print-config")
    assert code == 0, err
    return yaml.safe_load(out)


def test_config_file_gives_the_same_tensors_as_the_flags(trained_cnn3, tmp_path, run_cli) -> None:
    """The session's `train cnn3-w0.5 --data fashion-mnist-mini --epochs 1 --seed 0` (conftest), from a file."""
    cfg = tmp_path / "train.yaml"
    cfg.write_text("model: cnn3-w0.5\ndata: fashion-mnist-mini\nepochs: 1\nseed: 0\n")
    code, _, err = run_cli("train", "--config", cfg, "-o", tmp_path / "c.safetensors", "--json")
    assert code == 0, err
    assert tensor_sha256(tmp_path / "c.safetensors") == tensor_sha256(trained_cnn3.path)
    from indistill_cli.io.checkpoint import load_checkpoint

    a = load_checkpoint(trained_cnn3.path).history[-1]["command"]["config"]
    b = load_checkpoint(tmp_path / "c.safetensors").history[-1]["command"]["config"]
    assert {**a, "output": None} == {**b, "output": None}  # the same resolved options recorded


def test_flags_win_over_the_file_and_both_spellings_are_keys(tmp_path) -> None:
    cfg = tmp_path / "d.yaml"
    cfg.write_text("teacher: t.safetensors\nstudent: cnn3-w0.5\nmethod: [kd, 'pkt:0.5']\nepochs: 7\n"
                   "weight_decay: 0.0\nbatch-size: 64\nlr: 0.01\naugment: false\n")
    got = _printed("distill", "--config", cfg, "-o", "s.safetensors", "--epochs", "2", "--augment")
    assert got["epochs"] == 2 and got["augment"] is True  # the flags
    assert got["lr"] == 0.01 and got["batch-size"] == 64 and got["weight-decay"] == 0.0  # the file, - or _
    assert got["method"] == ["kd", "pkt:0.5"] and got["output"] == "s.safetensors"


def test_print_config_reads_back_in_yaml_and_toml(tmp_path) -> None:
    args = ("warmup", "-t", "p.safetensors", "-s", "cnn3-w0.5", "-o", "w.safetensors", "--epochs-per-tap", "3,4,5",
            "--milestones", "10,20", "--plan-epochs", "32")
    first = _printed(*args)
    for fmt, load in (("yaml", yaml.safe_load), ("toml", tomllib.loads)):
        code, out, err = _cli(*args, "--print-config", "--config-format", fmt)
        assert code == 0, err
        path = tmp_path / f"w.{fmt}"
        path.write_text(out)
        assert {k: v for k, v in load(out).items() if v is not None} == {k: v for k, v in first.items()
                                                                         if v is not None}
        assert _printed("warmup", "--config", path) == first  # the file alone gives the same options


def test_pipeline_takes_per_stage_sections(tmp_path) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text("teacher: cnn3\nstudent: cnn3-w0.5\nout: runs/x\nepochs: 32\n"
                   "stages:\n  teacher: {epochs: 20, lr: 0.1}\n  prune: {mode: chained}\n"
                   "  warmup: {epochs-per-tap: [3, 4, 5]}\n  distill: {method: [pkt], ce: 0}\n")
    got = _printed("pipeline", "--config", cfg)
    st = got["stages"]
    assert st["teacher"]["epochs"] == 20 and st["teacher"]["lr"] == 0.1 and st["prune"]["mode"] == "chained"
    assert st["warmup"]["epochs-per-tap"] == "3,4,5" and st["distill"]["method"] == ["pkt"]
    assert st["distill"]["ce"] == 0.0 and got["epochs"] == 32
    flat = _printed("pipeline", "--config", cfg, "--teacher-epochs", "5")  # a flag still wins over a section
    assert flat["stages"]["teacher"]["epochs"] == 5


@pytest.mark.parametrize("text,needles", [
    ("model: cnn3\nepochz: 3\n", ("unknown key 'epochz'", "line 2", "did you mean 'epochs'")),
    ("model: cnn3\nepochs: ten\n", ("epochs", "line 2", "whole number", "'ten'")),
    ("model: cnn3\nlr: [1, 2]\n", ("lr", "line 2", "expected a number")),
    ("model: cnn3\naugment: maybe\n", ("augment", "line 2", "true or false")),
    ("model: cnn3\nepochs: 0\n", ("--epochs must be at least 1, got 0", "epochs in", "line 2")),
    ("model: cnn3\nval-fraction: 1.5\n", ("--val-fraction must be in [0, 1)", "val-fraction in", "line 2")),
    ("model: [cnn3\n", ("not valid YAML", "line")),
    ("- model\n", ("expected a mapping",)),
])
def test_bad_keys_types_and_values_are_one_line(tmp_path, text, needles) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    code, _, err = _cli("train", "--config", cfg, "-o", tmp_path / "m.safetensors")
    assert_one_line_error(code, err, str(cfg), *needles)
    assert not (tmp_path / "m.safetensors").exists()


def test_bad_toml_and_bad_sections_are_one_line(tmp_path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('model = "cnn3"\nepochs = "x"\n')
    code, _, err = _cli("train", "--config", cfg, "-o", "m.safetensors")
    assert_one_line_error(code, err, "bad.toml", "epochs", "whole number")
    cfg.write_text('model = "cnn3"\nepochs = \n')
    code, _, err = _cli("train", "--config", cfg, "-o", "m.safetensors")
    assert_one_line_error(code, err, "not valid TOML", "line 2")
    cfg = tmp_path / "p.yaml"
    cfg.write_text("teacher: cnn3\nstudent: cnn3-w0.5\nout: x\nstages:\n  warmup:\n    epochs_per_tp: 3\n")
    code, _, err = _cli("pipeline", "--config", cfg)
    assert_one_line_error(code, err, "unknown key 'epochs_per_tp' in stages.warmup", "line 6", "it takes a, b, "
                          "epochs-per-tap", "did you mean 'epochs-per-tap'")
    cfg.write_text("teacher: cnn3\nstudent: cnn3-w0.5\nout: x\nstages:\n  warmpu: {a: 1}\n")
    code, _, err = _cli("pipeline", "--config", cfg)
    assert_one_line_error(code, err, "unknown stage 'warmpu'", "line 5", "did you mean 'warmup'")
    code, _, err = _cli("train", "--config", tmp_path / "nope.yaml", "-o", "m.safetensors")
    assert_one_line_error(code, err, "nope.yaml: file not found")


def test_every_command_takes_a_config_file(tmp_path) -> None:
    from typer.main import get_command

    from indistill_cli.cli import app

    commands = get_command(app).commands
    assert {n for n, c in commands.items() if {"config", "print_config"} <= {p.name for p in c.params}} == set(commands)
    cfg = tmp_path / "m.yaml"
    cfg.write_text("json: true\n")
    code, out, err = _cli("methods", "--config", cfg)  # a listing: --json from the file
    assert code == 0 and isinstance(json.loads(out), list), err


def test_study_and_import_read_config_files_like_every_command(tmp_path) -> None:
    """`study` and `import` declare their options as settings too: --print-config reads back through --config,
    and a design option a file sets beside --preset is refused in one line naming the file and line."""
    args = ("study", "-t", "t.safetensors", "-s", "cnn3-w0.5", "--methods", "kd,pkt", "--seeds", "3", "--budget",
            "added", "--train-fraction", "0.5", "--teacher-lr", "0.1", "-o", "st", "--jobs", "2")
    got = _printed(*args)
    assert got["methods"] == "kd,pkt" and got["seeds"] == 3 and got["budget"] == "added" and got["jobs"] == 2
    assert got["train-fraction"] == 0.5 and got["teacher-lr"] == 0.1 and got["lr"] == 0.001  # the student's: Adam
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump(got))
    assert _printed("study", "--config", cfg) == got
    imp = _printed("import", "w.pth", "--arch", "tv:resnet18", "--ignore", "fc.*", "-o", "t.safetensors")
    assert imp["arch"] == "tv:resnet18" and imp["ignore"] == ["fc.*"] and "augment" not in imp
    cfg.write_text("preset: smoke\nepochs: 3\n")
    code, _, err = _cli("study", "--config", cfg, "-o", tmp_path / "s")
    assert_one_line_error(code, err, "--preset smoke fixes the study's design: --epochs", "study.yaml line 2")
    assert not (tmp_path / "s").exists()


def test_the_demo_config_is_the_demo_command_line() -> None:
    """examples/demo.yaml holds what examples/demo.sh's step 4 ran as flags before it read the file."""
    from conftest import ROOT

    flags = _printed("pipeline", "-t", "demo-out/teacher.safetensors", "-s", "cnn3-w0.5", "--data", "fashion-mnist-mini",
                     "--seed", "0", "-m", "kd", "--epochs", "32", "--budget", "equal", "--epochs-per-tap", "3,4,5",
                     "-o", "demo-out/indistill")
    assert _printed("pipeline", "--config", ROOT / "examples" / "demo.yaml") == flags
