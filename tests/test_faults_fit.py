"""Fault probes of fits outside the Kaggle workflow (issue 24), one test each.

$ python -m pytest -q tests/test_faults_fit.py

- W&B that cannot run online (``WANDB_MODE=online`` without a key, a closed or silent
  server) falls back to offline with one line and the fit finishes; a project or tag W&B
  would refuse is one line, exit 2, before anything is written.
- A non-zero ``LOCAL_RANK`` left in the environment, with or without a stale
  ``SKETCHFUSION_RUN_DIR``, is refused before anything is written; a run directory handed
  to a worker is accepted only from this launch's rank 0.
- A full disk: one line naming the disk and the resume command, last.ckpt kept, no torn
  metrics row; a resume drops a torn tail.
- A store the fit or the probe refuses leaves no run directory; ``probe``/``stack`` stopped
  by SIGTERM say so in one line, and the same command then runs to the end.
"""

from __future__ import annotations

import csv
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from feature_store import load_arrays, open_store
from tests.fixtures_training import DEMO_CONFIG, fit_cli, read_csv, small_store
from tests.train_runner import wait_for_pause

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
STEPS_PER_EPOCH = 4  # 5 classes x 24 train rows, batch 32


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return small_store(tmp_path_factory.mktemp("store") / "s")


@pytest.fixture(autouse=True)
def _no_wandb_login(monkeypatch, tmp_path):
    """No W&B key or server of the machine running the tests; W&B off unless a test sets it."""
    for key in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_TAGS",
                "WANDB_RUN_ID", "LOCAL_RANK", "RANK", "WORLD_SIZE",
                "SKETCHFUSION_RUN_DIR", "SKETCHFUSION_LAUNCH"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_MODE", "disabled")


def fit_args(store: Path, run: Path | None, *extra: str, epochs: int = 1) -> list[str]:
    where = ["--run_dir", str(run)] if run else []
    return ["fit", "--config", DEMO_CONFIG, "--data.store", str(store), "--data.batch_size",
            "32", *where, "--trainer.max_epochs", str(epochs),
            "--trainer.enable_progress_bar", "false", *extra]  # fmt: skip


@pytest.fixture
def run_train(capsys, caplog):
    """``train.main(argv)`` in this process -> its exit code and what it printed (stderr,
    stdout, and Lightning's ``rank_zero_info`` lines, which go through ``logging``)."""

    def run(argv: list[str]) -> tuple[int, str]:
        capsys.readouterr()
        caplog.clear()
        with caplog.at_level("INFO"):
            try:
                train.main(argv)
                rc = 0
            except SystemExit as exit_:
                rc = exit_.code if isinstance(exit_.code, int) else 1
        captured = capsys.readouterr()
        return rc, captured.err + captured.out + caplog.text

    return run


def one_line(out: str, pattern: str) -> str:
    assert "Traceback" not in out, out[-3000:]
    lines = [line for line in out.splitlines() if re.search(pattern, line)]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- W&B ----------------------------------------------------------------------------------
def test_wandb_online_without_a_key_trains_offline(store, tmp_path, monkeypatch, run_train):
    monkeypatch.setenv("WANDB_MODE", "online")
    run = tmp_path / "run"
    rc, out = run_train(fit_args(store, run))
    assert rc == 0, out[-3000:]
    line = one_line(out, "W&B offline")
    assert "WANDB_MODE=online but no W&B API key" in line
    assert (run / "checkpoints" / "best.ckpt").is_file()
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and offline[0].name.endswith(
        (run / "wandb_run_id").read_text().strip()
    )


def test_wandb_online_with_a_closed_server_trains_offline(store, tmp_path, monkeypatch, run_train):
    port = free_port()  # nothing listens there any more
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")  # were the check to miss it: no long wait
    run = tmp_path / "run"
    rc, out = run_train(fit_args(store, run))
    assert rc == 0, out[-3000:]
    assert f"no answer from the W&B server http://127.0.0.1:{port}" in one_line(out, "W&B offline")
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert list((run / "wandb").glob("offline-run-*"))


def test_wandb_server_that_never_answers_falls_back_after_the_init_timeout(store, tmp_path):
    """A port that accepts connections but never answers: W&B's init times out (here after
    WANDB_INIT_TIMEOUT=2 s), the run starts offline under the same id, the fit finishes."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)  # connections complete in the backlog; nothing is ever read
        env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "online",
               "WANDB_API_KEY": "x" * 40, "WANDB_INIT_TIMEOUT": "2",
               "WANDB_BASE_URL": f"http://127.0.0.1:{server.getsockname()[1]}",
               # W&B's own error reports would wait on the silent server at exit
               "WANDB_ERROR_REPORTING": "false", "HOME": str(tmp_path)}  # fmt: skip
        run = tmp_path / "run"
        proc = subprocess.run([sys.executable, "train.py", *fit_args(store, run)], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    out = proc.stderr + proc.stdout
    assert proc.returncode == 0, out[-3000:]
    assert "the online run did not start (CommError" in one_line(out, "W&B offline")
    run_id = (run / "wandb_run_id").read_text().strip()
    assert [p.name.split("-")[-1] for p in (run / "wandb").glob("offline-run-*")] == [run_id]
    assert (run / "val_predictions.csv").is_file()


def test_a_wandb_start_that_fails_offline_leaves_the_fit_without_wandb(
    tmp_path, caplog, monkeypatch
):
    from fusion.loggers import start_or_fallback

    monkeypatch.delenv("WANDB_SILENT", raising=False)  # the tests' own, which W&B's settings obey
    monkeypatch.delenv("WANDB_QUIET", raising=False)
    tries = []

    def start():
        tries.append(dict(init))
        raise OSError(errno.EACCES, "Permission denied")

    init = {"mode": None, "settings": {"quiet": True, "init_timeout": 30.0}}
    with caplog.at_level("INFO"):
        assert start_or_fallback(start, init, tmp_path) is None
    assert [t["mode"] for t in tries] == [None, "offline"]  # online, then offline once
    assert tries[1]["settings"] == {"silent": True, "init_timeout": 30.0}
    assert "W&B offline: the online run did not start (PermissionError" in caplog.text
    assert "W&B off: its offline run did not start either" in caplog.text


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (["--wandb.project", "a/b"], {}, r"--wandb\.project: Invalid project name 'a/b'"),
        ([], {"WANDB_PROJECT": "a/b"}, r"WANDB_PROJECT: Invalid project name 'a/b'"),
        (["--wandb.tags", "[" + "t" * 65 + "]"], {}, r"--wandb\.tags: Tag .* 65 characters"),
        ([], {"WANDB_TAGS": "ok," + "t" * 65}, r"WANDB_TAGS: Tag .* 65 characters"),
    ],
    ids=["project-option", "project-env", "tag-option", "tag-env"],
)
def test_wandb_names_w_and_b_refuses_stop_before_anything_is_written(
    store, tmp_path, monkeypatch, run_train, extra, env, message
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runs = tmp_path / "runs"
    for run in (tmp_path / "run", None):  # --run_dir given, or claimed under runs/
        rc, out = run_train(fit_args(store, run, "--runs_root", str(runs), *extra))
        assert rc == 2, out[-3000:]
        one_line(out, message)
        assert not (tmp_path / "run").exists() and not runs.exists()


# -- ranks --------------------------------------------------------------------------------
def test_leftover_local_rank_with_a_stale_run_dir_touches_nothing(store, tmp_path, monkeypatch,
                                                                  run_train):  # fmt: skip
    finished = tmp_path / "finished"
    fit_cli(store, finished, epochs=1)
    before = snapshot(finished)
    monkeypatch.setenv("LOCAL_RANK", "1")  # left by a launcher, with its run directory
    monkeypatch.setenv("SKETCHFUSION_RUN_DIR", str(finished))
    runs = tmp_path / "runs"
    for run in (None, tmp_path / "new"):
        rc, out = run_train(fit_args(store, run, "--runs_root", str(runs)))
        assert rc == 2, out[-3000:]
        assert "unset LOCAL_RANK" in one_line(out, r"LOCAL_RANK/RANK=1 is set but no")
    assert snapshot(finished) == before  # no config.yaml, best-v1.ckpt, val files rewritten
    assert not runs.exists() and not (tmp_path / "new").exists()


def test_leftover_local_rank_alone_is_one_line(store, tmp_path, monkeypatch, run_train):
    monkeypatch.setenv("LOCAL_RANK", "1")
    rc, out = run_train(fit_args(store, None, "--runs_root", str(tmp_path / "runs")))
    assert rc == 2, out[-3000:]
    one_line(out, r"LOCAL_RANK/RANK=1 is set but no multi-process launch is")
    assert not (tmp_path / "runs").exists()


def test_a_handed_run_dir_is_accepted_only_from_this_launch(tmp_path, monkeypatch):
    """What a DDP worker that Lightning launches sees: the run directory its parent (rank
    0) exported, with the parent's token; a stale token (another process) is ignored."""
    from fusion.runs import LAUNCH_ENV, RUN_DIR_ENV, _process_token, export_run_dir, handed_run_dir

    monkeypatch.setenv(RUN_DIR_ENV, "")
    monkeypatch.setenv(LAUNCH_ENV, "")
    export_run_dir(tmp_path / "run")  # as rank 0 does, then a worker is started
    child = "from fusion.runs import handed_run_dir; print(handed_run_dir())"
    env = {**os.environ, "PYTHONPATH": str(REPO), "LOCAL_RANK": "1", "WORLD_SIZE": "2"}
    worker = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True,
                            text=True, check=True, timeout=120)  # fmt: skip
    assert worker.stdout.strip() == str(tmp_path / "run")
    # In this process the same environment is a stale one: its token names this process,
    # not this process's parent; nor does a token of the parent's pid with another start.
    assert handed_run_dir() is None
    parent = _process_token(os.getppid())
    monkeypatch.setenv(LAUNCH_ENV, parent)
    assert handed_run_dir() == tmp_path / "run"
    monkeypatch.setenv(LAUNCH_ENV, parent.split(":")[0] + ":1")
    assert handed_run_dir() is None


# -- a full disk --------------------------------------------------------------------------
def assert_whole_rows(path: Path) -> list[dict]:
    data = path.read_text()
    assert data.endswith("\n")
    rows = list(csv.reader(data.splitlines()))
    assert all(len(r) == len(rows[0]) for r in rows), "a torn or shifted row"
    table = read_csv(path)
    for r in table:
        assert not r["val/acc_top1"] or 0 <= float(r["val/acc_top1"]) <= 1
    return table


def assert_each_epoch_once(run: Path, epochs: int) -> None:
    rows = assert_whole_rows(run / "metrics.csv")
    steps = [int(r["step"]) for r in rows if r["fusion/alpha"]]
    assert steps == list(range(epochs * STEPS_PER_EPOCH))
    for key in ("val/acc_top1", "train/loss"):
        assert [int(r["epoch"]) for r in rows if r[key]] == list(range(epochs)), key


def test_full_disk_is_one_line_keeps_last_ckpt_and_whole_rows(
    store, tmp_path, monkeypatch, run_train
):
    import fusion.loggers

    def disk_fills(f, data: bytes) -> None:  # half a row reaches the disk, then ENOSPC
        f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    # Lightning saves metrics.csv after each log call. Epoch 0 adds columns (the file is
    # rewritten); the first append, epoch 1's val metrics, finds the disk full.
    write_fully = fusion.loggers._write_fully
    monkeypatch.setattr(fusion.loggers, "_write_fully", disk_fills)
    run = tmp_path / "run"
    rc, out = run_train(fit_args(store, run, epochs=4))
    assert rc == 1, out[-3000:]
    line = one_line(out, "no space left")
    assert f"--ckpt_path last --run_dir {run}" in line and f"{run}/checkpoints/last.ckpt" in line
    mount = Path(run).resolve()
    while not os.path.ismount(mount):
        mount = mount.parent
    assert f"the disk {mount} " in line
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == STEPS_PER_EPOCH  # the end of epoch 0, whole
    rows = assert_whole_rows(run / "metrics.csv")
    assert {int(r["epoch"]) for r in rows if r["val/acc_top1"]} == {0}  # epoch 1: not at all
    monkeypatch.setattr(fusion.loggers, "_write_fully", write_fully)  # space again
    resumed = fit_cli(store, run, "--ckpt_path", "last", epochs=4)
    assert resumed.trainer.global_step == 4 * STEPS_PER_EPOCH
    assert_each_epoch_once(run, 4)


def test_resume_drops_a_torn_metrics_row(store, tmp_path):
    run = tmp_path / "run"
    fit_cli(store, run, epochs=2)
    metrics = run / "metrics.csv"
    header = metrics.read_text().splitlines()[0].split(",")
    lr = header.index("lr-AdamW/pg1")
    torn = ["" for _ in header]
    torn[lr], torn[header.index("step")] = "0.00123", "9"
    with metrics.open("a") as f:  # a row cut short by a full disk: no newline, fields missing
        f.write(",".join(torn[: lr + 1]))
    fit_cli(store, run, "--ckpt_path", "last", epochs=3)
    assert_each_epoch_once(run, 3)
    assert "0.00123" not in metrics.read_text()


def test_drop_torn_tail_keeps_whole_rows_only(tmp_path):
    from fusion.loggers import drop_torn_tail

    path = tmp_path / "metrics.csv"
    path.write_text("a,b,step\n1,2,0\n3,4,1\n5,6\n")  # a whole line, but a field short
    assert drop_torn_tail(path) == ["a", "b", "step"]
    assert path.read_text() == "a,b,step\n1,2,0\n3,4,1\n"
    path.write_text("a,b,step\n1,2,0\n3,4")  # no newline
    drop_torn_tail(path)
    assert path.read_text() == "a,b,step\n1,2,0\n"
    path.write_text("a,b,st")  # not even a whole header: a new file is written
    assert drop_torn_tail(path) == [] and not path.exists()


# -- stores refused, probe and stack stopped -------------------------------------------------
def nan_store(src: Path, dst: Path) -> Path:
    from feature_store import write_store

    info = open_store(src)
    splits = {}
    for name in info.splits:
        a = load_arrays(src, name)
        splits[name] = {"id": a.ids, "label": a.labels, "path": a.paths, "caption": a.captions,
                        "image_emb": a.image_emb, "text_emb": a.text_emb}  # fmt: skip
    splits["train"]["image_emb"][3, 2] = np.nan
    write_store(dst, splits=splits, class_names=info.class_names)
    return dst


@pytest.mark.parametrize("kind", ["single-class", "nan"])
def test_a_refused_store_leaves_no_run_dir(store, tmp_path, monkeypatch, run_train, kind):
    monkeypatch.setenv("WANDB_MODE", "offline")  # W&B on: it used to leave wandb/ behind
    bad = tmp_path / "bad"
    if kind == "nan":
        nan_store(store, bad)
    else:
        small_store(bad, num_classes=1)
    run = tmp_path / "run"
    rc, out = run_train(fit_args(bad, run))
    assert rc == 2, out[-3000:]
    one_line(out, "two classes|NaN" if kind == "nan" else "needs at least two")
    assert not run.exists()
    rc, out = run_train(fit_args(store, run))  # the same --run_dir, a good store
    assert rc == 0, out[-3000:]


def test_probe_on_a_nan_store_is_one_line(store, tmp_path, run_train):
    bad = nan_store(store, tmp_path / "bad")
    run = tmp_path / "probe"
    rc, out = run_train(["probe", "--data.store", str(bad), "--run_dir", str(run)])
    assert rc == 2, out[-3000:]
    one_line(out, r"train: 1 rows have NaN or infinite")
    assert not run.exists()


def _runner(pause: str, flag: Path, argv: list[str]) -> subprocess.Popen:
    code = (
        "import sys, time, importlib, pathlib, train\n"
        "module, name = sys.argv[1].rsplit('.', 1)\n"
        "mod = importlib.import_module(module)\n"
        "def paused(*a, **k):\n"
        "    pathlib.Path(sys.argv[2]).write_text('paused')\n"
        "    time.sleep(120)\n"
        "setattr(mod, name, paused)\n"
        "train.main(sys.argv[3:])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-c", code, pause, str(flag), *argv], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_probe_stopped_mid_sweep_reruns(store, tmp_path, run_train, sig):
    run, flag = tmp_path / "probe", tmp_path / "paused"
    argv = ["probe", "--data.store", str(store), "--run_dir", str(run),
            "--probe.cs", "[0.1,1]", "--probe.views", "[image]"]  # fmt: skip
    proc = _runner("fusion.commands.probe.fit_probe", flag, argv)
    wait_for_pause(flag, proc)
    assert (run / ".unfinished").is_file() and (run / "config.yaml").is_file()
    os.killpg(proc.pid, sig)
    err = proc.communicate(timeout=120)[1]
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, err[-3000:]
        line = one_line(err, "stopped by SIGTERM")
        assert f"its unfinished run directory {run} is removed" in line and "Rerun" in line
        assert not run.exists()
    else:
        assert (run / ".unfinished").is_file()  # left behind: the rerun replaces it
    rc, out = run_train(argv)
    assert rc == 0, out[-3000:]
    assert (run / "probe.json").is_file() and not (run / ".unfinished").exists()


def test_stack_stopped_while_writing_reruns(store, tmp_path, run_train):
    members = []
    for seed in (0, 1):
        run = tmp_path / f"member{seed}"
        fit_cli(store, run, "--seed_everything", str(seed), epochs=1)
        members += ["--checkpoint", str(run / "checkpoints" / "best.ckpt")]
    run, flag = tmp_path / "stack", tmp_path / "paused"
    argv = ["stack", *members, "--data.store", str(store), "--run_dir", str(run)]
    proc = _runner("fusion.predict.write_predictions_csv", flag, argv)
    wait_for_pause(flag, proc)
    assert (run / ".unfinished").is_file()
    os.killpg(proc.pid, signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err[-3000:]
    assert "Rerun the same command" in one_line(err, "train.py stack: stopped by SIGTERM")
    assert not run.exists()
    rc, out = run_train(argv)
    assert rc == 0, out[-3000:]
    assert (run / "stack.json").is_file() and not (run / ".unfinished").exists()
    shutil.rmtree(run)
