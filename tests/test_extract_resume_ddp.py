"""Kill -9 and resume, and 2-process DDP, against an uninterrupted 1-process store.

Both run `python -m data_prep` in subprocesses, so a killed or spawned process never
touches the pytest process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import data_prep
from feature_store import load_arrays, open_store
from tests.fixtures_extraction import (  # noqa: F401 - fixtures
    assert_same_store,
    draw_kaggle_tree,
    prep_argv,
    tiny_models,
)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_models):  # noqa: F811
    tmp = tmp_path_factory.mktemp("ref")
    root = draw_kaggle_tree(tmp / "data", train=4, val=2, test=3)
    return root, data_prep.main(prep_argv(root, tiny_models, tmp / "store"))


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **extra}


def _markers(out: Path) -> list[Path]:
    return sorted((out / "_prep").glob("*/shard-*.json")) if (out / "_prep").is_dir() else []


def test_kill_9_then_resume_equals_uninterrupted(reference, tiny_models, tmp_path):  # noqa: F811
    root, ref = reference
    out = tmp_path / "store"
    # tests/prep_runner.py runs data_prep with the shard writer stopping after 2 shards.
    cmd = [sys.executable, "-m", "tests.prep_runner", "--pause-after", "2", "--",
           *prep_argv(root, tiny_models, out)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(),
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 180
    while len(_markers(out)) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the run never finished two shards"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9: no cleanup of any kind
    proc.wait()
    assert len(_markers(out)) == 2 and not (out / "manifest.json").exists()
    # What a kill mid-write leaves: a half-written temp file, and a shard renamed into
    # place whose done marker never got written. Both must be redone, not trusted.
    (out / "train" / "shard-00002.arrow").write_bytes(b"half a shard")
    (out / "train" / "shard-00003.arrow.tmp4242").write_bytes(b"partial")

    resumed = data_prep.main(prep_argv(root, tiny_models, out))
    assert_same_store(ref, resumed)
    m = open_store(resumed).manifest
    assert m["timing"]["shards_reused"] == 2
    assert not list(resumed.rglob("*.tmp*"))
    for split in m["splits"]:
        ids = load_arrays(resumed, split).ids
        assert len(ids) == len(set(ids)) == m["splits"][split]["rows"]


def test_two_ddp_processes_give_the_same_store(reference, tiny_models, tmp_path):  # noqa: F811
    root, ref = reference
    out = tmp_path / "store"
    argv = prep_argv(root, tiny_models, out, "--run.devices", "2", "--run.strategy", "ddp")
    res = subprocess.run([sys.executable, "-m", "data_prep", *argv], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_store(ref, out)
    # Both ranks really ran: shards alternate between them (rank = shard order % 2).
    ranks = [json.loads(p.read_text())["rank"] for p in _markers(out)]
    assert sorted(ranks) == sorted([0, 1] * (len(ranks) // 2) + [0] * (len(ranks) % 2))

    # Resume on 2 ranks with a single unfinished shard: one rank has nothing to do and
    # must neither fail nor hang the other.
    (out / "manifest.json").unlink()
    _markers(out)[-1].unlink()
    res = subprocess.run([sys.executable, "-m", "data_prep", *argv], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_store(ref, out)
    assert open_store(out).manifest["timing"]["shards_reused"] == len(ranks) - 1
