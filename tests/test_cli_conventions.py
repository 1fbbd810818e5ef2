"""One command-line style for predict.py, predict.py ensemble, analysis and data_prep.

$ python -m pytest -q tests/test_cli_conventions.py

LightningCLI's convention everywhere: ``--config/-c`` YAML, underscored (dotted) option
names, a one-line help with the real default for every option; bad input or usage exits 2
with one stderr line naming the input, an internal error exits 1 with its traceback.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

import predict
from analysis import __main__ as analysis_cli
from analysis.report import ReportOptions
from data_prep.__main__ import _cli as prep_cli
from data_prep.config import PrepConfig, build_parser
from feature_store.compat import parser_actions
from feature_store.synthetic import make_synthetic_store
from fusion import predict as fusion_predict
from fusion import stacker
from fusion.commands import ensemble
from fusion.commands import predict as predict_command

REPO = Path(__file__).resolve().parents[1]
PARSERS = {
    "predict": predict_command.parser,
    "ensemble": ensemble.parser,
    "analysis": analysis_cli.parser,
    "data_prep": build_parser,
}
OURS_ONLY = {"help", "config", "print_config"}  # jsonargparse's own


def _options(parser):
    """(action, its block of the --help text) for each option we define."""
    text = parser.format_help()
    for action in parser_actions(parser):
        if action.dest in OURS_ONLY or not action.option_strings or action.help == "==SUPPRESS==":
            continue
        if action.help == "Path to a configuration file.":  # data_prep's --input etc. groups
            continue
        if action.option_strings[0].endswith(".help"):  # jsonargparse's help of a class type
            continue
        name = action.option_strings[0]
        block = re.search(rf"^  {re.escape(name)}(?![.\w]).*?(?=^  -|^\S|\Z)", text, re.S | re.M)
        yield action, " ".join(block.group(0).split()) if block else ""


@pytest.mark.parametrize("entry", PARSERS)
def test_every_option_has_a_one_line_help_with_its_default(entry):
    parser = PARSERS[entry]()
    assert any(a.dest == "config" and "-c" in a.option_strings for a in parser_actions(parser))
    names = []
    for action, block in _options(parser):
        name = action.option_strings[0]
        names.append(name)
        assert name == name.lower() and "-" not in name[2:], f"{name}: not underscored"
        assert action.help and action.help.strip(), f"{entry} {name}: no help"
        assert "(required" in block or "default:" in block, f"{entry} {name}: {block}"
    assert len(names) >= 6


def _parsed_defaults(parser, *required: str) -> dict:
    ns = parser.parse_args(list(required)).as_dict()
    return {k: v for k, v in ns.items() if k not in OURS_ONLY and k != "__path__"}


def test_the_shown_defaults_are_the_real_ones():
    # analysis: the CLI's defaults are ReportOptions' (the Python API's)
    opts = analysis_cli.parse_args(["--store", "s", "--out", "o"])
    assert opts == ReportOptions(store=Path("s"), out=Path("o"))
    # data_prep: the dataclasses' defaults, section by section
    assert _parsed_defaults(build_parser()) == asdict(PrepConfig())
    # predict: the library function's batch size; ensemble: the stacker's folds
    got = _parsed_defaults(predict_command.parser(), "--checkpoint", "a", "--store", "s")
    sig = inspect.signature(fusion_predict.predict_probs).parameters
    assert got["batch_size"] == sig["batch_size"].default
    assert got["split"] == sig["split"].default and got["strict"] is False
    got = _parsed_defaults(ensemble.parser(), "--probs", "a.npz")
    assert got["folds"] == inspect.signature(stacker.cross_fit).parameters["folds"].default


@pytest.mark.parametrize(
    "entry,argv",
    [
        ("predict", ["--checkpoint", "a.ckpt", "--checkpoint", "b.ckpt", "--store", "s",
                     "--batch_size", "64", "--strict"]),
        ("ensemble", ["--probs", "a.npz", "--probs", "b.npz", "--fit_on", "x.npz", "--fit_on",
                      "y.npz", "--method", "logistic", "--folds", "3", "--message", "m"]),
        ("analysis", ["--store", "s", "--out", "o", "--query", "a dog", "--probe_cs",
                      "[0.5,2]", "--probe_train", "0", "--classes", "cat,dog"]),
        ("data_prep", ["--config", str(REPO / "configs/prep/demo.yaml"), "--run.out", "x",
                       "--image.pooling", "mean"]),
    ],
)  # fmt: skip
def test_print_config_then_c_gives_the_same_options(entry, argv, tmp_path, capsys):
    parser = PARSERS[entry]()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([*argv, "--print_config"])
    assert exit_.value.code == 0
    saved = tmp_path / "options.yaml"
    saved.write_text(capsys.readouterr().out)
    again = _parsed_defaults(PARSERS[entry](), "-c", str(saved))
    assert again == _parsed_defaults(PARSERS[entry](), *argv)


def test_flags_take_lightning_style_booleans():
    p = predict_command.parser()
    base = ["--checkpoint", "a", "--store", "s"]
    assert p.parse_args([*base, "--strict"]).strict is True
    assert p.parse_args([*base, "--strict", "true"]).strict is True
    assert p.parse_args([*base, "--strict", "false", "--allow_store_mismatch"]).strict is False


def test_old_dashed_analysis_names_still_parse_with_a_note(capsys):
    old = analysis_cli.parse_args(["--store", "s", "--out", "o", "--probe-train", "0",
                                   "--tsne-points=7", "--probe-cs", "0.5,2"])  # fmt: skip
    new = analysis_cli.parse_args(["--store", "s", "--out", "o", "--probe_train", "0",
                                   "--tsne_points", "7", "--probe_cs", "[0.5,2]"])  # fmt: skip
    assert old == new and new.probe_train is None and new.probe_cs == (0.5, 2.0)
    err = capsys.readouterr().err
    assert "--probe-train is deprecated; use --probe_train" in err


# -- exit codes --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "store"
    make_synthetic_store(root, num_classes=3, per_class={"train": 6, "val": 3, "test": 2})
    return root


def _run(entry: str, argv: list[str]) -> int:
    """The entry point in this process; its exit code."""
    try:
        if entry == "predict":
            predict.main(argv)
        elif entry == "ensemble":
            predict.main(["ensemble", *argv])
        elif entry == "analysis":
            return analysis_cli.main(argv)
        elif entry == "data_prep":
            return prep_cli(argv)
    except SystemExit as exit_:
        return exit_.code
    return 0


BAD = [  # entry, argv ({store}, {tmp} filled in), what the one line must name
    ("predict", ["--checkpoint", "{tmp}/nope.ckpt", "--store", "{store}"], "{tmp}/nope.ckpt"),
    ("predict", ["--checkpoint", "x.ckpt", "--store", "{tmp}/nowhere"], "{tmp}/nowhere"),
    ("predict", ["--checkpoint", "x.ckpt", "--store", "{store}", "--batch_size", "0"],
     "--batch_size"),
    ("predict", ["-c", "{tmp}/missing.yaml"], "--config: File does not exist"),
    ("predict", ["--store", "{store}"], "checkpoint"),
    ("ensemble", ["--probs", "{tmp}/gone.probs.npz"], "{tmp}/gone.probs.npz"),
    ("ensemble", ["--probs", "a.npz", "--folds", "1"], "--folds"),
    ("ensemble", ["--probs", "a.npz", "--method", "median"], "--method"),
    ("analysis", ["--store", "{tmp}/nowhere", "--out", "{tmp}/r"], "{tmp}/nowhere"),
    ("analysis", ["--store", "{store}", "--out", "{tmp}/r", "--probe_train", "-5"],
     "--probe_train"),
    ("analysis", ["--store", "{store}", "--out", "{tmp}/r", "--probe_cs", "0.1,x"],
     "--probe_cs"),
    ("analysis", ["--store", "{store}", "--out", "{tmp}/r", "--tsne_points", "0",
                  "--patch_images", "0", "--classes", "zebra"], "--classes names ['zebra']"),
    ("data_prep", ["--input.root", "{tmp}/no_images"], "{tmp}/no_images"),
    ("data_prep", ["--run.batch_size", "0"], "--run.batch_size"),
    ("data_prep", ["--image.pooling", "max"], "--image.pooling 'max'"),
    ("data_prep", ["-c", "{tmp}/missing.yaml"], "--config: File does not exist"),
    ("data_prep", ["--run.shard_size", "many"], "--run.shard_size"),
]  # fmt: skip


@pytest.mark.parametrize("entry,argv,names", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_exits_2_with_one_line_naming_it(entry, argv, names, store, tmp_path, capsys):
    fill = {"{store}": str(store), "{tmp}": str(tmp_path)}

    def filled(text: str) -> str:
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    capsys.readouterr()
    rc = _run(entry, [filled(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and ": note:" not in line]
    assert rc == 2, err
    assert len(lines) == 1 and "error:" in lines[0], err
    assert filled(names) in lines[0] and "Traceback" not in err


def test_internal_errors_are_not_reported_as_bad_input(store, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("a bug, not the user's input")

    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")
    monkeypatch.setattr(fusion_predict, "predict_probs", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        predict.main(["--checkpoint", str(ckpt), "--store", str(store), "--out", str(tmp_path)
                      + "/s.csv"])  # fmt: skip
    monkeypatch.setattr(analysis_cli, "build_report", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        analysis_cli.main(["--store", str(store), "--out", str(tmp_path / "r")])
    monkeypatch.setattr("data_prep.pipeline.run", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        prep_cli(["--config", str(REPO / "configs/prep/demo.yaml"), "--run.out", str(tmp_path)])


def test_an_internal_error_exits_1_from_the_shell(store, tmp_path):
    code = (
        "import sys, analysis.__main__ as m\n"
        "def boom(opts): raise RuntimeError('a bug')\n"
        "m.build_report = boom\n"
        f"sys.exit(m.main(['--store', {str(store)!r}, '--out', {str(tmp_path / 'r')!r}]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert res.returncode == 1 and "RuntimeError: a bug" in res.stderr
