"""train.py's help: the top level is fast and explains the tool; every option of ours in
``fit --help`` has a one-line description from its docstring and its real default.

$ python -m pytest -q tests/test_train_help.py
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import subprocess
import sys

import pytest

from fusion.cli import FusionCLI
from fusion.datamodule import FeatureDataModule
from fusion.heads import HEADS
from fusion.module import FusionModule
from fusion.recipe import Recipe
from tests.fixtures_training import REPO

LINKED = {"set_dims", "class_names"}  # read from the store, not options
EXTRA = ["run_dir", "runs_root", "experiment", "wandb_project", "wandb_group"]
EXTRA += [f"wandb.{k}" for k in ("project", "entity", "group", "tags", "job_type")]
SUBCOMMANDS = ["fit", "validate", "test", "predict", "probe", "stack", "cv", "tune"]


def our_options() -> list[str]:
    model = [p for p in inspect.signature(FusionModule.__init__).parameters if p != "self"]
    data = [p for p in inspect.signature(FeatureDataModule.__init__).parameters if p != "self"]
    recipe = [f.name for f in dataclasses.fields(Recipe)]
    return (
        [f"model.{p}" for p in model if p not in LINKED]
        + [f"data.{p}" for p in data]
        + [f"recipe.{p}" for p in recipe]
        + EXTRA
    )


def help_entries(text: str) -> dict[str, str]:
    """``{option: its help text}`` from argparse's help layout (one entry per option)."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"^  (--[\w.]+)(.*)$", line)
        if match:
            current = match.group(1)[2:]
            rest = match.group(2)
            # "  --model.optimizer.lr LR         learning rate ..." keeps its help on the same line.
            same_line = re.split(r"\s{2,}", rest.strip(), maxsplit=1)
            entries[current] = same_line[1] if len(same_line) == 2 else ""
        elif current and line.startswith(" " * 10) and line.strip():
            entries[current] += " " + line.strip()
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


def cli_help(capsys, subcommand: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        FusionCLI(args=[subcommand, "--help"])
    assert exit_.value.code in (0, None)
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def fit_help() -> dict[str, str]:
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", ["train.py"])
    from io import StringIO

    out = StringIO()
    mp.setattr(sys, "stdout", out)
    try:
        with pytest.raises(SystemExit):
            FusionCLI(args=["fit", "--help"])
    finally:
        mp.undo()
    return help_entries(out.getvalue())


def test_top_level_help_is_quick_and_explains_the_tool():
    # The top level imports neither Lightning nor torch: it prints before either loads.
    code = (
        "import sys, train; train.main(['--help']); "
        "heavy = [m for m in ('torch', 'lightning') if m in sys.modules]; "
        "print('HEAVY', heavy)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert "HEAVY []" in proc.stdout
    text = proc.stdout
    assert "no arguments" in text.lower() and "demo" in text
    for sub in SUBCOMMANDS:
        assert re.search(rf"^  {sub}\s+\S", text, re.M), sub
    assert "predict.py --checkpoint" in text
    assert "Exit codes" in text
    proc = subprocess.run(
        [sys.executable, "train.py", "-h"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout == text.replace("HEAVY []\n", "")


def test_every_option_of_ours_has_a_one_line_help(fit_help):
    missing = []
    for option in our_options():
        assert option in fit_help, f"--{option} is not in fit --help"
        description = fit_help[option].split("(type:")[0].split("(required")[0].strip()
        if len(description) < 10:
            missing.append(option)
    assert not missing, f"options without a description: {missing}"


def test_help_shows_real_defaults(fit_help):
    assert "default: (512,)" in fit_help["model.head_options.hidden_dims"]
    assert "default: null" not in fit_help["model.head_options.hidden_dims"]
    assert "default: dual_logit" in fit_help["model.head"]
    assert "default: 3000" in fit_help["recipe.min_steps"]
    assert "default: test" in fit_help["data.test_split"]


def test_head_specific_options_name_their_heads(fit_help):
    # An option that only some heads take (by their signatures) starts with those heads:
    # "dual_logit only: ..." or, when all but a few take it, "every head but X: ...".
    all_heads = set(HEADS)
    checked = 0
    for name in inspect.signature(FusionModule.__init__).parameters:
        users = {
            h for h, cls in HEADS.items() if name in inspect.signature(cls.__init__).parameters
        }
        if name in LINKED or not users or users == all_heads:
            continue
        text = fit_help[f"model.{name}"]
        only = re.match(r"^([\w, ]+) only:", text)
        but = re.match(r"^every head but ([\w, ]+):", text)
        assert only or but, f"--model.{name}: {text!r} does not say which heads take it"
        named = {h.strip() for h in (only or but).group(1).split(",")}
        assert (named if only else all_heads - named) == users, name
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_scoring_subcommands_explain_themselves(subcommand, capsys):
    raw = cli_help(capsys, subcommand)
    text, entries = " ".join(raw.split()), help_entries(raw)
    assert "checkpoint (--ckpt_path)" in text
    assert "allow_store_mismatch" in entries
    if subcommand == "predict":
        assert "predict.py" in text and "out" in entries and "strict" in entries
    if subcommand == "test":
        assert "--data.test_split" in text
