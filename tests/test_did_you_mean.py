"""An option typo names the nearest real option, on one line, exit code 2, at every entry
point (feature_store/cli.py ``unknown_option``; train.py through its LightningCLI parser).

$ python -m pytest -q tests/test_did_you_mean.py
"""

from __future__ import annotations

import pytest

import predict
import train
from analysis import __main__ as analysis_cli
from data_prep.__main__ import _cli as prep_cli
from feature_store.cli import cli_parser, unknown_option


def _exit_code(call) -> int:
    try:
        return call()
    except SystemExit as exit_:
        return exit_.code


ENTRIES = [  # (id, call taking argv, argv with a typo, the line expected)
    ("train.py fit", lambda a: train.main(["fit", *a]), ["--model.droput", "0.3"],
     "train.py: error: unknown option --model.droput; did you mean --model.head_options.dropout?"),
    ("train.py validate", lambda a: train.main(["validate", *a]), ["--ckpt_pth", "x.ckpt"],
     "train.py: error: unknown option --ckpt_pth; did you mean --ckpt_path?"),
    ("train.py probe", lambda a: train.main(["probe", *a]), ["--data.stroe", "s"],
     "train.py probe: error: unknown option --data.stroe; did you mean --data.store?"),
    ("train.py stack", lambda a: train.main(["stack", *a]), ["--stack.methd=mean"],
     "train.py stack: error: unknown option --stack.methd; did you mean --stack.method?"),
    ("predict.py", predict.main, ["--store", "s", "--chekpoint", "x.ckpt"],
     "predict.py: error: unknown option --chekpoint; did you mean --checkpoint?"),
    ("predict.py ensemble", lambda a: predict.main(["ensemble", *a]), ["--methdo", "logistic"],
     "predict.py ensemble: error: unknown option --methdo; did you mean --method?"),
    ("data_prep", prep_cli, ["--run.ot", "stores/x"],
     "data_prep: error: unknown option --run.ot; did you mean --run.out?"),
    ("analysis", analysis_cli.main, ["--store", "s", "--out", "r", "--tsne_pionts", "5"],
     "analysis: error: unknown option --tsne_pionts; did you mean --tsne_points?"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "argv", "line"), [e[1:] for e in ENTRIES], ids=[e[0] for e in ENTRIES]
)
def test_a_typo_gets_one_line_with_the_nearest_option(
    call, argv, line, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # nothing may be written, here either
    assert _exit_code(lambda: call(argv)) == 2
    err = [s for s in capsys.readouterr().err.splitlines() if s.strip()]
    assert err == [line]
    assert not any(tmp_path.iterdir())


def test_no_near_option_still_one_line_pointing_at_help(capsys):
    p = cli_parser("python -m analysis", "x")
    p.add_argument("--store", type=str)
    assert _exit_code(lambda: p.parse_args(["--zzzzzz", "1"])) == 2
    err = capsys.readouterr().err.strip()
    assert err == "analysis: error: unknown option --zzzzzz (options: python -m analysis --help)"


def test_only_unknown_options_are_rewritten():
    p = cli_parser("prog", "x")
    p.add_argument("--out", type=str)
    assert unknown_option("unrecognized arguments: stray", p) is None  # a value, not an option
    assert unknown_option('Parser key "out": bad', p) is None
    assert unknown_option("unrecognized arguments: --otu=x", p) == (
        "unknown option --otu; did you mean --out?"
    )
