"""One command layer: every subcommand's ``--help`` lists each of its own options with its
default, read from the command's parser itself (a new option cannot go unchecked), and
``fit``, ``cv`` and ``tune`` name the experiment of several ``--config`` files alike.

$ python -m pytest -q tests/test_command_parsers.py
"""

from __future__ import annotations

import re

import pytest

import predict
import train
from feature_store.compat import parser_actions
from fusion.cli import FusionCLI
from fusion.commands import cv, ensemble, probe, stack, tune
from fusion.commands import predict as predict_command
from fusion.runs import experiment_name


class _Parsed(Exception):
    """Raised by :class:`_Stop` with what it caught, before anything is instantiated."""


class _Stop(FusionCLI):
    """LightningCLI's own parser (``parser``) or the fit's parsed config (``experiment``),
    and nothing run."""

    def parse_arguments(self, parser, args):
        if args == ["--parser"]:
            raise _Parsed(parser)
        super().parse_arguments(parser, args)

    def before_instantiate_classes(self):
        raise _Parsed(experiment_name(self.config[self.subcommand]))


def lightning_parser(subcommand: str):
    with pytest.raises(_Parsed) as got:
        _Stop(args=["--parser"])
    (subcommands,) = [a for a in parser_actions(got.value.args[0]) if a.dest == "subcommand"]
    return subcommands.choices[subcommand]


# command: (its parser, the call that prints its --help)
COMMANDS = {
    **{
        sub: (lambda sub=sub: lightning_parser(sub), lambda sub=sub: train.main([sub, "--help"]))
        for sub in ("fit", "validate", "test", "predict")
    },
    "probe": (probe.parser, lambda: train.main(["probe", "--help"])),
    "stack": (stack.parser, lambda: train.main(["stack", "--help"])),
    "cv": (cv.parser, lambda: train.main(["cv", "--help"])),
    "tune": (tune.parser, lambda: train.main(["tune", "--help"])),
    "predict.py": (predict_command.parser, lambda: predict.main(["--help"])),
    "predict.py ensemble": (ensemble.parser, lambda: predict.main(["ensemble", "--help"])),
}


def help_entries(text: str) -> dict[str, str]:
    """``{option string: its help text}``, each entry as argparse lays it out."""
    entries, current = {}, None
    for line in text.splitlines():
        match = re.match(r"^  (-[-\w.]+)", line)
        if match:
            current = match.group(1)
            entries[current] = line
        elif current and line.startswith(" " * 6) and line.strip():
            entries[current] += " " + line.strip()
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


def shown(default) -> str:
    """A default as jsonargparse's help prints it."""
    return "null" if default is None else str(default)


def own_options(parser) -> list:
    """The parser's options that take a value and have a default to show: not --help,
    --config, --print_config, the config groups (``--model``) or their ``.help``."""
    return [
        a
        for a in parser_actions(parser)
        if a.option_strings
        and a.default != "==SUPPRESS=="
        and type(a).__name__ != "ActionConfigFile"
    ]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_lists_every_option_with_its_default(command, capsys):
    make_parser, print_help = COMMANDS[command]
    options = own_options(make_parser())
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        print_help()
    assert exit_.value.code in (0, None)
    entries = help_entries(capsys.readouterr().out)
    assert len(options) >= 4
    for action in options:
        entry = entries.get(action.option_strings[0])
        assert entry is not None, f"{command} --help lacks {action.option_strings[0]}"
        if action.required:
            assert "required" in entry, entry
        else:
            assert re.search(rf"default: {re.escape(shown(action.default))}[,)]", entry), entry


def test_cv_and_tune_own_options_are_not_passed_to_the_fits(tmp_path):
    from fusion.command_options import parse_own_options

    argv = ["--config", "a.yaml", "--n_trials=3", "--model.lr", "0.1", "--pruner", "none",
            "--search", "s.yaml", "--seed", "4"]  # fmt: skip
    own, rest, given = parse_own_options(tune.parser(), argv)
    assert (own.n_trials, own.pruner, own.search, own.seed) == (3, "none", "s.yaml", 4)
    assert own.study_dir is None and rest == ["--config", "a.yaml", "--model.lr", "0.1"]
    assert given == ["--n_trials", "--pruner", "--search", "--seed"]


@pytest.mark.parametrize(
    ("first", "second", "name"),
    [
        ("model.label_smoothing: 0.2\n", "model:\n  label_smoothing: 0.1\n", "first"),
        ("experiment: one\n", "experiment: two\n", "two"),  # the later config wins
    ],
)
def test_fit_cv_and_tune_name_the_same_experiment(tmp_path, first, second, name, capsys):
    (tmp_path / "first.yaml").write_text(first)
    (tmp_path / "second.yaml").write_text(second)
    runs = tmp_path / "runs"
    args = ["--config", str(tmp_path / "first.yaml"), "--config", str(tmp_path / "second.yaml"),
            "--data.store", str(tmp_path / "no_store"), "--runs_root", str(runs)]  # fmt: skip
    with pytest.raises(_Parsed) as fit:
        _Stop(args=["fit", *args])
    assert fit.value.args[0] == name

    # cv and tune make their directories under the experiment, then the fit refuses the
    # missing store.
    with pytest.raises(SystemExit) as exit_:
        train.main(["cv", *args, "--data.folds", "2"])
    assert exit_.value.code == 2
    search = tmp_path / "space.yaml"
    search.write_text("model.label_smoothing: {low: 0.0, high: 0.5}\n")
    with pytest.raises(SystemExit) as exit_:
        train.main(["tune", *args, "--n_trials", "1", "--search", str(search)])
    assert exit_.value.code == 2
    made = sorted(p.name for p in (runs / name).iterdir())
    assert made[0] == "cv2" and made[1].startswith("tune-") and len(made) == 2, made
    assert [p.name for p in runs.iterdir()] == [name]
