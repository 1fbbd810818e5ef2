"""fusion/'s layers (issue 21): a library that raises typed errors and never exits, one
command layer above it, and fusion/exit.py the one place where errors become exit codes.

Static scans (ast) of the source, and the exit mapping checked on each error type.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from feature_store import StoreError
from feature_store.synthetic import make_synthetic_store
from fusion.errors import FusionError, RunFailed, Stopped, UsageError
from fusion.exit import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    ExitError,
    exit_codes,
    exit_error,
)
from tests.import_scan import circles, graph, imports, sources

REPO = Path(__file__).resolve().parents[1]
FUSION = REPO / "fusion"
EXIT_MODULE = "fusion.exit"
# The command layer: LightningCLI's subcommands, and every other command's package.
COMMAND_LAYER = ("fusion.cli", "fusion.commands", "fusion.command_options", EXIT_MODULE)


def _sources() -> dict[str, ast.Module]:
    return sources("fusion")


def _in_layer(module: str, layer: tuple[str, ...]) -> bool:
    return any(module == m or module.startswith(m + ".") for m in layer)


def test_the_scans_see_every_fusion_module():
    modules = _sources()
    assert {"fusion.predict", "fusion.commands.stack", "fusion.exit", "fusion.cli"} <= set(modules)


def test_no_fusion_module_but_exit_py_exits():
    """SystemExit, sys.exit, os._exit and ExitError appear in fusion/exit.py only: library
    code raises typed errors, commands run inside fusion.exit.exit_codes."""
    offences = []
    for module, tree in _sources().items():
        if module == EXIT_MODULE:
            continue
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Name) and node.id in ("SystemExit", "ExitError"):
                name = node.id
            elif isinstance(node, ast.Attribute) and node.attr in ("exit", "_exit"):
                base = node.value
                if isinstance(base, ast.Name) and base.id in ("sys", "os"):
                    name = f"{base.id}.{node.attr}"
            elif isinstance(node, ast.ImportFrom) and node.module == EXIT_MODULE:
                names = {a.name for a in node.names} & {"ExitError"}
                name = next(iter(names), None)
            if name:
                offences.append(f"{module}:{node.lineno}: {name}")
    assert offences == []


def test_library_modules_import_nothing_from_the_command_layer():
    offences = [
        f"{module}:{line}: imports {name}"
        for module, tree in _sources().items()
        if not _in_layer(module, COMMAND_LAYER)
        for name, line in imports(module, tree)
        if _in_layer(name, COMMAND_LAYER)
    ]
    assert offences == []


def test_library_modules_parse_no_arguments():
    offences = [
        f"{module}:{node.lineno}"
        for module, tree in _sources().items()
        if not _in_layer(module, COMMAND_LAYER)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in ("parse_args", "argv")
    ]
    assert offences == []


def test_fusion_imports_nothing_from_the_packages_above_it():
    """analysis/ and data_prep/ (and the entry points) sit above fusion/ or beside it:
    fusion reads the store through feature_store only."""
    above = ("analysis", "data_prep", "sketchfusion", "train", "predict", "bench", "tools")
    offences = [
        f"{module}:{line}: imports {name}"
        for module, tree in _sources().items()
        for name, line in imports(module, tree)
        if name.split(".")[0] in above
    ]
    assert offences == []


def test_no_circle_of_fusion_modules():
    """Counting imports inside functions: none may close a circle."""
    assert circles(graph(_sources())) == []


def test_the_scan_finds_a_circle_and_an_exit(tmp_path):
    """The scans above can fail: the same walk over two modules that import each other."""
    a = ast.parse("def f():\n    from fusion.b import g\n")
    b = ast.parse("from fusion.a import f\nimport sys\nsys.exit(1)\n")
    assert ("fusion.b", 2) in imports("fusion.a", a) and ("fusion.a", 1) in imports("fusion.b", b)
    assert circles(graph({"fusion.a": a, "fusion.b": b})) == ["fusion.a -> fusion.b -> fusion.a"]
    exits = [n for n in ast.walk(b) if isinstance(n, ast.Attribute) and n.attr == "exit"]
    assert len(exits) == 1


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (UsageError("--x 0: give a value > 0"), EXIT_BAD_INPUT, "prog: error: --x 0: give"),
        (StoreError("no store at s; build it"), EXIT_BAD_INPUT, "prog: error: no store at s"),
        (RunFailed("the loss is NaN; lower --model.lr"), EXIT_INTERNAL, "prog: error: the loss"),
        (Stopped("stopped by SIGTERM; rerun", "SIGTERM"), EXIT_SIGTERM, "prog: stopped by SIGTERM"),
        (Stopped("stopped by Ctrl-C; rerun", "SIGINT"), EXIT_SIGINT, "prog: stopped by Ctrl-C"),
    ],
)
def test_each_error_type_has_its_exit_code_and_one_line(error, code, line, capsys):
    with pytest.raises(ExitError) as exc, exit_codes("prog"):
        raise error
    assert exc.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line)
    assert exc.value.__cause__ is error


def test_an_error_no_input_explains_keeps_its_traceback():
    assert exit_error(RuntimeError("a bug"), "prog") is None
    with pytest.raises(KeyError), exit_codes("prog"):
        raise KeyError("a bug")
    assert issubclass(UsageError, FusionError) and issubclass(RunFailed, FusionError)


def test_library_errors_share_the_base():
    from fusion.callbacks import NonFiniteLossError
    from fusion.commands.tune import SearchSpaceError, TuneError
    from fusion.ensemble import EnsembleError
    from fusion.predict import CheckpointError
    from fusion.runs import ResumeError, RunDirError
    from fusion.stacker import StackError
    from fusion.submission import KaggleClientMissing, KaggleUploadFailed, SubmissionError

    bad_input = [CheckpointError, EnsembleError, StackError, SubmissionError, ResumeError,
                 RunDirError, KaggleClientMissing, SearchSpaceError, TuneError]  # fmt: skip
    assert all(issubclass(e, FusionError) and not issubclass(e, RunFailed) for e in bad_input)
    assert issubclass(NonFiniteLossError, RunFailed) and issubclass(KaggleUploadFailed, RunFailed)
    # Callers that caught the old bases still do.
    assert issubclass(ResumeError, FileNotFoundError) and issubclass(CheckpointError, ValueError)


def test_the_python_api_raises_what_predict_py_prints(tmp_path, capsys):
    """sketchfusion.predict is predict.py's library call: the same refusal, raised as a
    typed error instead of an exit."""
    import sketchfusion as sf
    from fusion.commands.predict import main as predict_main
    from fusion.submission import SubmissionError

    store = make_synthetic_store(tmp_path / "s", num_classes=2)
    out = tmp_path / "s" / "submission.csv"
    with pytest.raises(SubmissionError, match="inside the store") as raised:
        sf.predict(tmp_path / "a.ckpt", store, out)
    with pytest.raises(SystemExit) as exited:
        predict_main(["--checkpoint", str(tmp_path / "a.ckpt"), "--store", str(store.root),
                      "--out", str(out)])  # fmt: skip
    assert exited.value.code == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip() == f"predict.py: error: {raised.value}"


def test_a_library_function_raises_instead_of_exiting(tmp_path):
    """submit (behind predict.py, train.py predict and a fit's submission) refuses a bad
    --category with a SubmissionError, not a SystemExit, and writes nothing."""
    import numpy as np

    from feature_store import load_arrays
    from fusion.predict import submit
    from fusion.submission import SubmissionError

    store = make_synthetic_store(tmp_path / "s", num_classes=2)
    ids = load_arrays(store, "test").ids
    probs = np.full((len(ids), 2), 0.5, np.float32)
    with pytest.raises(SubmissionError, match="--category 'roman'"):
        submit(tmp_path / "sub.csv", ids, probs, store=store.root, split="test",
               checkpoints=[], category="roman")  # fmt: skip
    assert not (tmp_path / "sub.csv").exists()


def test_probe_stopped_by_sigint_is_130_through_the_one_mapping(tmp_path):
    """A command stopped by Ctrl-C: fusion.stopping raises Stopped, fusion.exit exits 130."""
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from fusion.exit import exit_codes\n"
        "from fusion.stopping import stop_exits\n"
        "with exit_codes('train.py probe'), stop_exits('train.py probe', Path(sys.argv[1])):\n"
        f"    os.kill(os.getpid(), {int(signal.SIGINT)})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == EXIT_SIGINT, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("train.py probe: stopped by Ctrl-C")
