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
from fusion.heads import HEADS, HeadOptions
from fusion.module import FusionModule, OptimizerOptions, ScheduleOptions
from fusion.recipe import Recipe
from tests.fixtures_training import REPO

LINKED = {"set_dims", "class_names"}  # read from the store, not options
EXTRA = ["run_dir", "runs_root", "experiment", "wandb_project", "wandb_group"]
EXTRA += [f"wandb.{k}" for k in ("project", "entity", "group", "tags", "job_type")]
SUBCOMMANDS = ["fit", "validate", "test", "predict", "probe", "stack", "cv", "tune"]


GROUPS = {"head_options": HeadOptions, "optimizer": OptimizerOptions, "schedule": ScheduleOptions}


def our_options() -> list[str]:
    model = [p for p in inspect.signature(FusionModule.__init__).parameters if p != "self"]
    model = [
        f"{p}.{f.name}" if p in GROUPS else p
        for p in model
        for f in (dataclasses.fields(GROUPS[p]) if p in GROUPS else [None])
    ]
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
    assert "default: [512]" in fit_help["model.head_options.hidden_dims"]
    assert "default: adamw" in fit_help["model.optimizer.name"]
    assert "default: cosine" in fit_help["model.schedule.name"]
    assert "default: null" in fit_help["model.weight_decay_sweep"]
    assert "default: null" not in fit_help["model.head_options.hidden_dims"]
    assert "default: dual_logit" in fit_help["model.head"]
    assert "default: 3000" in fit_help["recipe.min_steps"]
    assert "default: test" in fit_help["data.test_split"]


def test_head_options_name_their_heads(fit_help):
    # Each head option starts with the heads that take it (by their signatures; branch_loss
    # by the module, for the heads with branches trained on their own): "every head:",
    # "every head but X:" or "h1, h2:"; one that only some heads take defaults to None, the
    # head's own default.
    all_heads = set(HEADS)
    for field in dataclasses.fields(HeadOptions):
        users = {
            h
            for h, cls in HEADS.items()
            if field.name in inspect.signature(cls.__init__).parameters
        } or {"gated", "dual_logit"}  # branch_loss: the loss on each branch
        text = fit_help[f"model.head_options.{field.name}"]
        every = re.match(r"^every head:", text)
        but = re.match(r"^every head but ([\w, ]+):", text)
        some = re.match(r"^([\w, ]+):", text)
        assert every or but or some, f"{field.name}: {text!r} does not say which heads take it"
        if every:
            named = all_heads
        elif but:
            named = all_heads - {h.strip() for h in but.group(1).split(",")}
        else:
            named = {h.strip() for h in some.group(1).split(",")}
        assert named == users, field.name
        assert ("default: null" in text) == (users != all_heads), field.name


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
