"""Fault probes of data_prep (issue 9) with the tiny models: damaged stores, NaN rows,
a full disk, SIGTERM, inputs that all fail, a killed demo drawing.

$ python -m pytest -q tests/test_faults_prep.py

Every probe ends in the same store as an uninterrupted run (``assert_same_store``) or in
a non-zero exit with one line, and a rerun of the same command finishes the store.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import data_prep
import predict
from feature_store import load_arrays, open_store, read_failures
from tests.fixtures_extraction import (  # noqa: F401 - fixtures
    assert_same_store,
    draw_kaggle_tree,
    prep_argv,
    tiny_models,
)
from tests.fixtures_training import fit_cli, read_csv

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_models):  # noqa: F811
    tmp = tmp_path_factory.mktemp("ref")
    root = draw_kaggle_tree(tmp / "data", train=4, val=2, test=3, bad_images=False)
    return root, data_prep.main(prep_argv(root, tiny_models, tmp / "store"))


def _shard(store: Path, split: str, i: int = 0) -> Path:
    return store / split / f"shard-{i:05d}.arrow"


def _cli(argv: list[str], monkeypatch) -> int:
    from data_prep.__main__ import _cli as cli

    monkeypatch.setattr("sys.argv", ["python -m data_prep", *argv])
    return cli()


DAMAGE = {  # probe id -> what is done to a finished store before rerunning data_prep
    "truncated-shard": lambda s: _shard(s, "train").write_bytes(
        _shard(s, "train").read_bytes()[:300]
    ),
    "deleted-shard": lambda s: _shard(s, "train", 1).unlink(),
    "shard-copied-over-another": lambda s: shutil.copy(_shard(s, "train"), _shard(s, "train", 1)),
    "invalid-manifest": lambda s: (s / "manifest.json").write_text("{"),
    "wrong-typed-manifest": lambda s: (s / "manifest.json").write_text('{"dims": 3}'),
    "deleted-manifest-and-marker": lambda s: [
        (s / "manifest.json").unlink(),
        (s / "_prep" / "val" / "shard-00000.json").unlink(),
    ],
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_rerun_repairs_a_damaged_store(damage, reference, tiny_models, tmp_path, capsys):  # noqa: F811
    root, ref = reference
    out = tmp_path / "store"
    shutil.copytree(ref, out)
    DAMAGE[damage](out)
    capsys.readouterr()
    data_prep.main(prep_argv(root, tiny_models, out))
    printed = capsys.readouterr().out
    assert "nothing to do" not in printed
    assert_same_store(ref, out)
    if "shard" in damage:
        assert "redoing train/shard-0000" in printed


def test_non_finite_embeddings_go_to_failures(reference, tiny_models, tmp_path, monkeypatch):  # noqa: F811
    from data_prep.extract import Extractor

    root, ref = reference
    original = Extractor.predict_step
    calls = []

    def poisoned(self, batch, batch_idx=0):
        out = original(self, batch, batch_idx)
        calls.append(1)
        if len(calls) == 1:  # the first batch: train ids 0 and 1
            out["image_emb"][0, 3] = np.nan
            out["text_emb"][1, 0] = 1e6  # finite in float32, inf once stored as float16
        return out

    monkeypatch.setattr(Extractor, "predict_step", poisoned)
    out = data_prep.main(prep_argv(root, tiny_models, tmp_path / "store"))
    first_ids = load_arrays(ref, "train").ids[:2]
    failed = {r["id"]: r["reason"] for r in read_failures(out, "train")}
    assert failed == {
        first_ids[0]: "non-finite embedding (image)",
        first_ids[1]: "non-finite embedding (text)",
    }
    train = load_arrays(out, "train")
    assert train.ids == load_arrays(ref, "train").ids[2:]
    assert np.isfinite(train.image_emb).all() and np.isfinite(train.text_emb).all()
    counts = open_store(out).manifest["splits"]["train"]
    assert (counts["inputs"], counts["rows"], counts["failed"]) == (12, 10, 2)


def test_full_disk_is_one_line_and_leaves_no_temp_file(reference, tiny_models, tmp_path,  # noqa: F811
                                                       monkeypatch, capsys):  # fmt: skip
    from datasets.arrow_writer import ArrowWriter

    root, ref = reference
    out = tmp_path / "store"
    original, calls = ArrowWriter.finalize, []

    def full(self, *a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self._path))
        return original(self, *a, **kw)

    monkeypatch.setattr(ArrowWriter, "finalize", full)
    assert _cli(prep_argv(root, tiny_models, out), monkeypatch) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "No space left on device" in line]
    assert not list(out.rglob("*.tmp*")) and not (out / "manifest.json").exists()
    monkeypatch.setattr(ArrowWriter, "finalize", original)
    data_prep.main(prep_argv(root, tiny_models, out))
    assert_same_store(ref, out)


def test_sigterm_stops_after_the_shard_exits_143_and_rerun_finishes(reference, tiny_models,  # noqa: F811
                                                                    tmp_path):  # fmt: skip
    root, ref = reference
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "tests.prep_runner", "--sleep-per-shard", "1.5", "--",
           *prep_argv(root, tiny_models, out)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    markers = out / "_prep" / "train"
    deadline = time.monotonic() + 180
    while not (markers.is_dir() and list(markers.glob("*.json"))):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err[-3000:]
    assert "SIGTERM: stopped after train/shard-0000" in err and "Traceback" not in err
    done = list((out / "_prep").glob("*/*.json"))
    total = len(list((ref / "_prep").glob("*/*.json")))
    assert 1 <= len(done) < total and not (out / "manifest.json").exists()
    data_prep.main(prep_argv(root, tiny_models, out))
    assert_same_store(ref, out)
    assert open_store(out).manifest["timing"]["shards_reused"] == len(done)


def test_all_test_images_failing_still_gives_a_full_submission(tiny_models, tmp_path,  # noqa: F811
                                                               monkeypatch, capsys):  # fmt: skip
    monkeypatch.setenv("WANDB_MODE", "disabled")
    from data_prep.images import BadImageError, load_image

    root = draw_kaggle_tree(tmp_path / "data", test=0)  # only the bad-image fixtures...
    test_dir = root / "test_images" / "mistery_category"
    for f in list(test_dir.iterdir()):
        try:
            load_image(f)
            f.unlink()  # ...that the loader rejects
        except BadImageError:
            pass
    inputs = sorted(p.stem for p in test_dir.iterdir())
    store = data_prep.main(prep_argv(root, tiny_models, tmp_path / "store"))
    counts = open_store(store).manifest["splits"]["test"]
    assert counts["rows"] == 0 and counts["failed"] == counts["inputs"] == len(inputs)
    fit_cli(store, tmp_path / "run", epochs=1)
    capsys.readouterr()
    sub = tmp_path / "submission.csv"
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    predict.main(["--checkpoint", str(ckpt), "--store", str(store), "--out", str(sub)])
    assert f"WARNING: {len(inputs)} test inputs failed extraction" in capsys.readouterr().err
    rows = read_csv(sub)
    assert sorted(r["Id"] for r in rows) == inputs
    labels = load_arrays(store, "train").labels
    assert {int(r["Category"]) for r in rows} == {int(np.bincount(labels).argmax())}
    with pytest.raises(SystemExit) as exit_:
        predict.main(["--checkpoint", str(ckpt), "--store", str(store), "--out", str(sub),
                      "--strict"])  # fmt: skip
    assert exit_.value.code == 2


def test_a_killed_demo_drawing_leaves_nothing_half_done(tmp_path, monkeypatch):
    from data_prep import demo_images

    original, drawn = demo_images.draw_sketch, []

    def dies(*a, **kw):
        drawn.append(1)
        if len(drawn) == 30:
            raise KeyboardInterrupt  # the kill, as far as this process can see it
        return original(*a, **kw)

    monkeypatch.setattr(demo_images, "draw_sketch", dies)
    root = tmp_path / "demo" / "images"
    with pytest.raises(KeyboardInterrupt):
        demo_images.make_demo_images(root, num_classes=3)
    assert not root.exists()  # only ROOT.partial, which the next run starts afresh
    monkeypatch.setattr(demo_images, "draw_sketch", original)
    demo_images.make_demo_images(root, num_classes=3)
    assert not root.with_name("images.partial").exists()
    listing = demo_images.DEFAULT_PER_CLASS
    n_files = sum(1 for p in root.rglob("*.jpg"))
    assert n_files == 3 * sum(listing.values())
    answers = read_csv(root / "test_labels.csv")
    assert len(answers) == 3 * listing["test"]
    assert json.dumps(answers)  # plain rows
