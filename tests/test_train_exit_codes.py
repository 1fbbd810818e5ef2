"""train.py's exit codes (fusion/exit.py): 2 for bad input or usage, with one line naming
it and no traceback, and nothing written; 1 for an internal error; 0 for help.

$ python -m pytest -q tests/test_train_exit_codes.py

Bad stores, checkpoints and run directories are probed in tests/test_faults.py; this file
covers usage: the command line itself and the Trainer options.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import train
from tests.fixtures_training import DEMO_CONFIG, REPO, small_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return small_store(tmp_path_factory.mktemp("exit") / "store")


def fit(store, runs, *extra: str) -> list[str]:
    return ["fit", "--config", DEMO_CONFIG, "--data.store", str(store), "--runs_root",
            str(runs), "--trainer.max_epochs", "1", *extra]  # fmt: skip


# (id, extra fit arguments or a whole argv, message regex; "" for jsonargparse's usage text)
USAGE = [
    ("unknown-subcommand", ["fitt"], r"^train\.py: error: unknown subcommand 'fitt'.* probe"),
    ("unknown-option", ["--model.bogus", "1"], r"^train\.py: error: unknown option --model\.bogus"),
    ("missing-config", ["--config", "nope.yaml"], r"nope\.yaml"),
    ("wrong-type", ["--model.optimizer.lr", "abc"], r"model\.optimizer\.lr"),
    ("not-a-choice", ["--model.optimizer.name", "lion"], r"model\.optimizer"),
    ("accelerator-missing", ["--trainer.accelerator", "gpu"], r"^train\.py: error: --trainer"),
    ("devices-0", ["--trainer.devices", "0"], r"^train\.py: error: --trainer options: .*devices"),
    ("unknown-strategy", ["--trainer.strategy", "nope"], r"^train\.py: error: --trainer .*nope"),
    ("hidden-size-0", ["--model.head_options.hidden_dims", "[0]"], r"^train\.py: error: --model\.head_options\.hidden_dims"),
    ("hidden-size-negative", ["--model.head_options.hidden_dims", "[-3]"], r"hidden size must be >= 1"),
    ("cv-without-folds", ["cv", "--config", DEMO_CONFIG], r"^train\.py cv: error: give --data\.folds"),
    # An option the head does not take: refused, naming the option, the head and the heads
    # that take it; under its old flat name too (read as the grouped one, with a warning).
    ("head-option-not-taken", ["--model.head", "projection", "--model.head_options.linear_skip", "true"],
     r"^train\.py: error: --model\.head_options\.linear_skip: the head projection does not take "
     r"this option \(heads that do: concat, dual_logit, gated, text_only, visual_only\)"),
    ("old-flat-option-not-taken", ["--model.head", "projection", "--model.linear_skip", "true"],
     r"^train\.py: error: --model\.head_options\.linear_skip: the head projection does not"),
    ("sweep-with-one-value-type", ["--model.weight_decay_sweep", "0.1"], r"weight_decay_sweep"),
    ("weight-decay-list", ["--model.optimizer.weight_decay", "[0.1, 0.2]"],
     r"^train\.py: error: --model\.optimizer\.weight_decay \[0\.1, 0\.2\]: one value; "
     r"several .* are --model\.weight_decay_sweep \[0\.1, 0\.2\]$"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "message"), [u[1:] for u in USAGE], ids=[u[0] for u in USAGE])
def test_bad_usage_exits_2_and_writes_nothing(store, tmp_path, extra, message, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # a started W&B run would leave files
    runs = tmp_path / "runs"
    whole = extra[0] in ("fitt", "cv")
    argv = extra if whole else fit(store, runs, *extra)
    with pytest.raises(SystemExit) as exit_:
        train.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err[-2000:]
    assert "Traceback" not in err
    assert any(re.search(message, line) for line in err.splitlines()), err[-2000:]
    ours = [line for line in err.splitlines() if line.startswith("train.py: error")]
    assert len(ours) <= 1  # our errors are one line; jsonargparse's are its usage text
    assert not runs.exists() or not any(runs.rglob("*"))


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["cv", "--help"], ["fit", "--help"]])
def test_help_exits_0(argv, capsys):
    try:
        train.main(argv)
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    assert "usage:" in capsys.readouterr().out


def test_an_internal_error_exits_1_with_its_traceback(store, tmp_path):
    # A bug (here: training_step raising) is not bad input: exit 1 and the traceback.
    code = (
        "import sys, train, fusion.module as m\n"
        "def boom(self, batch, batch_idx): raise RuntimeError('injected bug')\n"
        "m.FusionModule.training_step = boom\n"
        "train.main(sys.argv[1:])\n"
    )
    argv = fit(store, tmp_path / "runs", "--trainer.enable_progress_bar", "false")
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "WANDB_MODE": "disabled"},
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" in proc.stderr and "RuntimeError: injected bug" in proc.stderr


@pytest.mark.parametrize("sub", ["fit", "cv"])
def test_a_config_that_is_not_utf8_is_one_line_naming_it(store, tmp_path, sub, capsys, monkeypatch):
    # A config saved in Latin-1 (an accent in a comment): jsonargparse's UnicodeDecodeError
    # names no file; the line names it and the fix, exit 2, nothing written.
    bad = tmp_path / "café.yaml"
    bad.write_bytes(f"config: {DEMO_CONFIG}\n# caf\xe9 au lait\n".encode("latin-1"))
    runs = tmp_path / "runs"
    argv = [sub, "--config", str(bad), "--data.store", str(store), "--runs_root", str(runs)]
    if sub == "cv":
        argv += ["--data.folds", "2"]
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        train.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err[-2000:]
    assert f"{bad} is not UTF-8 text (byte 0xe9 at offset" in lines[0]
    assert "iconv -f latin1 -t utf-8" in lines[0]
    assert not runs.exists() or not any(runs.rglob("*"))


def test_the_not_utf8_line_without_the_file_on_the_command_line(tmp_path):
    from fusion.exit import not_utf8_line

    good = tmp_path / "good.yaml"
    good.write_text("a: 1\n")
    try:
        b"\xe9t\xe9".decode("utf-8")
    except UnicodeDecodeError as err:
        line = not_utf8_line(err, ["--config", str(good), "--x=" + str(tmp_path / "absent")])
    assert line.startswith("a file it read is not UTF-8 text (invalid continuation byte at byte 0)")
