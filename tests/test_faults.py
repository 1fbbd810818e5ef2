"""Bad-input and fault probes of every entry point (issue 9), one table row each.

$ python -m pytest -q tests/test_faults.py

Each row runs one entry point in-process (``train.main``, ``predict.main``,
``python -m analysis``, ``python -m data_prep``) on a fresh copy of a small synthetic
store and a trained checkpoint, after ``setup`` breaks something, and expects its exit
code and, for an error, one stderr line matching ``message`` with no traceback;
``check`` then asserts what must (not) have changed. Probes that need real signals or
the tiny models live in tests/test_faults_runs.py and tests/test_faults_prep.py.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

import predict
import train
from feature_store import load_arrays, open_store
from tests.fixtures_extraction import draw_kaggle_tree, prep_argv
from tests.fixtures_training import DEMO_CONFIG, fit_cli, read_csv, small_store

pytestmark = pytest.mark.slow
MODELS = {  # what a data_prep manifest records; the synthetic store gets it for the probes
    "image": {"name": "facebook/dinov2-base", "revision": "abc", "pooling": "cls", "dim": 16},
    "text": {"name": "bert-base-uncased", "revision": "def", "pooling": "mean", "dim": 12},
}


@dataclass
class Ctx:
    """What a probe works on: a private copy of the store and checkpoint, and a tmp dir."""

    tmp: Path
    store: Path
    ckpt: Path
    run: Path  # a finished run directory (its own copy)
    notes: dict = field(default_factory=dict)

    def shard(self, split: str = "train") -> Path:
        return self.store / split / open_store(self.store).manifest["shards"][split][0]["file"]

    def edit_manifest(self, fn: Callable[[dict], None]) -> None:
        path = self.store / "manifest.json"
        manifest = json.loads(path.read_text())
        fn(manifest)
        path.write_text(json.dumps(manifest))


@dataclass
class Probe:
    id: str
    entry: str  # train | predict | analysis | prep
    argv: Callable[[Ctx], list[str]]
    rc: int
    message: str = ""  # regex of the one-line error (or warning) on stderr
    setup: Callable[[Ctx], None] | None = None
    check: Callable[[Ctx], None] | None = None


# -- setups ---------------------------------------------------------------------------
def _replace_rows(split: str, fn: Callable[[dict], None]) -> Callable[[Ctx], None]:
    """Rewrite a split of the probe's store through write_store (valid checksums)."""

    def setup(ctx: Ctx) -> None:
        from feature_store import write_store

        info = open_store(ctx.store)
        splits = {}
        for name in info.splits:
            a = load_arrays(ctx.store, name)
            cols = {"id": a.ids, "label": a.labels, "path": a.paths, "caption": a.captions,
                    "image_emb": a.image_emb, "text_emb": a.text_emb}  # fmt: skip
            if name == split:
                fn(cols)
            splits[name] = cols
        shutil.rmtree(ctx.store)
        write_store(ctx.store, splits=splits, class_names=info.class_names,
                    extra_manifest={"models": info.manifest["models"]})  # fmt: skip

    return setup


def _nan_row(cols: dict) -> None:
    cols["image_emb"][3, 2] = np.nan


def _inf_row(cols: dict) -> None:
    cols["text_emb"][1, 0] = np.inf


def _truncate(ctx: Ctx, split: str = "train") -> None:
    shard = ctx.shard(split)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def _delete(ctx: Ctx, split: str = "train") -> None:
    ctx.shard(split).unlink()


def _swap(ctx: Ctx) -> None:
    shutil.copy(ctx.shard("val"), ctx.shard("train"))


def _pooling(value: str) -> Callable[[Ctx], None]:
    return lambda ctx: ctx.edit_manifest(lambda m: m["models"]["image"].update(pooling=value))


def _fail_test_inputs(n: int) -> Callable[[Ctx], None]:
    """``n`` test images failed extraction: rows gone, listed in failures.csv."""

    def setup(ctx: Ctx) -> None:
        test = load_arrays(ctx.store, "test")
        failed = test.ids[:n]
        _replace_rows("test", lambda cols: _drop(cols, n))(ctx)
        rows = "".join(f"test/{i}.png,not an image,test,{i}\n" for i in failed)
        (ctx.store / "failures.csv").write_text("file,reason,split,id\n" + rows)
        ctx.edit_manifest(lambda m: m["splits"]["test"].update(inputs=len(test), failed=n))
        ctx.notes["ids"], ctx.notes["failed"] = test.ids, failed

    return setup


def _drop(cols: dict, n: int) -> None:
    for k in cols:
        cols[k] = cols[k][n:]


def _strip_fingerprint(ctx: Ctx) -> None:
    ckpt = torch.load(ctx.ckpt, weights_only=True)
    del ckpt["store_fingerprint"]
    torch.save(ckpt, ctx.ckpt)


def _other_head_version(ctx: Ctx) -> None:
    ckpt = torch.load(ctx.ckpt, weights_only=True)
    first = next(k for k in ckpt["state_dict"] if k.startswith("head."))
    ckpt["state_dict"][first] = torch.zeros(3)  # a weight of another shape
    torch.save(ckpt, ctx.ckpt)


def _truncate_ckpt(ctx: Ctx) -> None:
    ctx.ckpt.write_bytes(ctx.ckpt.read_bytes()[:2000])


def _text_ckpt(ctx: Ctx) -> None:
    ctx.ckpt.write_text("Id,Category\n1,2\n")


def _single_class(ctx: Ctx) -> None:
    shutil.rmtree(ctx.store)
    small_store(ctx.store, num_classes=1)


def _remember(*paths: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        ctx.notes["before"] = {p: _resolve(ctx, p).read_bytes() for p in paths}

    return setup


def _resolve(ctx: Ctx, path: str) -> Path:
    return Path(path.format(store=ctx.store, ckpt=ctx.ckpt, run=ctx.run, tmp=ctx.tmp))


def _unchanged(ctx: Ctx) -> None:
    for path, data in ctx.notes["before"].items():
        assert _resolve(ctx, path).read_bytes() == data, f"{path} changed"


def _both(*fns):
    def run(ctx: Ctx) -> None:
        for fn in fns:
            fn(ctx)

    return run


# -- checks ---------------------------------------------------------------------------
def _full_submission(ctx: Ctx) -> None:
    rows = read_csv(ctx.tmp / "sub.csv")
    assert [r["Id"] for r in rows] == ctx.notes["ids"]  # every input once, in id order
    train_labels = load_arrays(ctx.store, "train").labels
    prior_class = int(np.bincount(train_labels).argmax())
    for r in rows:
        if r["Id"] in ctx.notes["failed"]:
            assert int(r["Category"]) == prior_class
    mode = (ctx.tmp / "sub.csv").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # an ordinary file, not mkstemp's 0600


def _no_submission(ctx: Ctx) -> None:
    assert not (ctx.tmp / "sub.csv").exists()


# -- argv builders --------------------------------------------------------------------
def fit(*extra: str, store: str = "{store}") -> Callable[[Ctx], list[str]]:
    args = ["fit", "--config", DEMO_CONFIG, "--data.store", store, "--run_dir", "{tmp}/run",
            "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", *extra]  # fmt: skip
    return lambda ctx: [str(_resolve(ctx, a)) for a in args]


def pred(*extra: str, out: str = "{tmp}/sub.csv") -> Callable[[Ctx], list[str]]:
    args = ["--checkpoint", "{ckpt}", "--store", "{store}", "--out", out, *extra]
    return lambda ctx: [str(_resolve(ctx, a)) for a in args]


def report(out: str = "{tmp}/report") -> Callable[[Ctx], list[str]]:
    args = ["--store", "{store}", "--out", out, "--tsne_points", "0", "--patch_images", "0"]
    return lambda ctx: [str(_resolve(ctx, a)) for a in args]


def _touch(path: str) -> Callable[[Ctx], None]:
    return lambda ctx: _resolve(ctx, path).write_text("x")


NO_ADVICE = "weights_only=False"  # torch's advice, the opposite of what a user should do
DAMAGED = r"rerun the data_prep command"

PROBES = [
    # train.py ------------------------------------------------------------------------
    Probe("train-negative-lr", "train", fit("--model.optimizer.lr", "-0.1"), 2, r"--model\.optimizer\.lr -0\.1 .*> 0"),
    Probe("train-batch-0", "train", fit("--data.batch_size", "0"), 2, r"--data\.batch_size 0"),
    Probe("train-empty-weight-decay-sweep", "train", fit("--model.weight_decay_sweep", "[]"), 2,
          r"--model\.weight_decay_sweep \[\] is not a sweep"),
    Probe("train-negative-weight-decay-in-sweep", "train",
          fit("--model.weight_decay_sweep", "[0.1, -1]"), 2, r"--model\.weight_decay_sweep \[0\.1, -1\.0\] is not"),
    Probe("train-unknown-head", "train", fit("--model.head", "mlp"), 2,
          r"'mlp' is not a head; choose one of \[.*'concat'.*'dual_logit'"),
    Probe("train-truncated-ckpt-path", "train", fit("--ckpt_path", "{ckpt}"), 2,
          r"not a readable train\.py checkpoint", setup=_truncate_ckpt),
    Probe("train-text-file-ckpt-path", "train", fit("--ckpt_path", "{ckpt}"), 2,
          r"not a readable train\.py checkpoint", setup=_text_ckpt),
    Probe("train-truncated-last-ckpt", "train", fit("--run_dir", "{run}", "--ckpt_path", "last"),
          2, r"--ckpt_path: .*last\.ckpt is not a readable train\.py checkpoint",
          setup=_both(lambda ctx: _resolve(ctx, "{run}/checkpoints/last.ckpt").write_bytes(b"PK"),
                      _remember("{run}/config.yaml", "{run}/metrics.csv")),
          check=_unchanged),
    Probe("train-nan-row", "train", fit(), 2, r"train: 1 rows have NaN or infinite",
          setup=_replace_rows("train", _nan_row)),
    Probe("train-single-class", "train", fit(), 2, r"needs at least\s+two", setup=_single_class),
    Probe("train-non-finite-loss", "train", fit("--model.optimizer.lr", "1e30"), 1,
          r"training loss is nan"),
    Probe("train-existing-run-dir", "train", fit("--run_dir", "{run}"), 2, r"existing run",
          setup=_remember("{run}/metrics.csv", "{run}/config.yaml"), check=_unchanged),
    Probe("train-truncated-shard", "train", fit(), 2, rf"shard|data-.*bytes.*{DAMAGED}",
          setup=_truncate),
    Probe("train-deleted-shard", "train", fit(), 2, rf"arrow is missing; {DAMAGED}",
          setup=_delete),
    Probe("train-swapped-shard", "train", fit(), 2, rf"(checksum|bytes).*{DAMAGED}",
          setup=_swap),
    Probe("train-invalid-manifest", "train", fit(), 2, r"manifest\.json is not valid JSON",
          setup=lambda ctx: (ctx.store / "manifest.json").write_text("{not json")),
    Probe("train-wrong-typed-manifest", "train", fit(), 2,
          r"class_names is not a list of strings",
          setup=lambda ctx: ctx.edit_manifest(lambda m: m.update(class_names="cat,dog"))),
    # predict.py ----------------------------------------------------------------------
    Probe("predict-out-is-checkpoint", "predict", pred(out="{ckpt}"), 2,
          r"would overwrite the checkpoint", setup=_remember("{ckpt}"), check=_unchanged),
    Probe("predict-out-in-store", "predict", pred(out="{store}/sub.csv"), 2,
          r"inside the store", setup=_remember("{store}/manifest.json"), check=_unchanged),
    Probe("predict-out-is-directory", "predict", pred(out="{tmp}"), 2, r"is a directory"),
    Probe("predict-out-read-only", "predict", pred(out="/proc/sketchfusion/sub.csv"), 2,
          r"cannot write /proc/sketchfusion/sub\.csv"),
    Probe("predict-batch-0", "predict", pred("--batch_size", "0"), 2, r"--batch_size: .*0"),
    Probe("predict-truncated-ckpt", "predict", pred(), 2,
          r"not a readable train\.py checkpoint", setup=_truncate_ckpt),
    Probe("predict-text-file-ckpt", "predict", pred(), 2,
          r"not a readable train\.py checkpoint", setup=_text_ckpt),
    Probe("predict-ckpt-of-another-head-version", "predict", pred(), 2,
          r"weights do not fit this version's 'dual_logit' head", setup=_other_head_version,
          check=_no_submission),
    Probe("predict-inf-test-row", "predict", pred(), 2, r"NaN or infinite probabilities",
          setup=_replace_rows("test", _inf_row), check=_no_submission),
    Probe("predict-other-pooling", "predict", pred(), 2,
          r"models\.image\.pooling: 'cls' -> 'mean'.*--allow_store_mismatch",
          setup=_pooling("mean"), check=_no_submission),
    Probe("predict-other-pooling-override", "predict", pred("--allow_store_mismatch"), 0,
          setup=_pooling("mean")),
    Probe("predict-old-ckpt-no-fingerprint", "predict", pred(), 2,
          r"does not record the models.*--allow_store_mismatch", setup=_strip_fingerprint),
    Probe("predict-failed-test-image", "predict", pred(), 0,
          r"WARNING: 1 test inputs failed extraction.*test_00000 \(not an image\)",
          setup=_fail_test_inputs(1), check=_full_submission),
    Probe("predict-failed-test-image-strict", "predict", pred("--strict"), 2, r"--strict",
          setup=_fail_test_inputs(1), check=_no_submission),
    Probe("predict-all-test-images-failed", "predict", pred(), 0,
          r"WARNING: 20 test inputs failed", setup=_fail_test_inputs(20),
          check=_full_submission),
    Probe("predict-truncated-shard", "predict", pred(), 2, DAMAGED,
          setup=lambda ctx: _truncate(ctx, "test")),
    Probe("predict-invalid-manifest", "predict", pred(), 2, r"not valid JSON",
          setup=lambda ctx: (ctx.store / "manifest.json").write_text("[1, 2")),
    Probe("predict-wrong-typed-manifest", "predict", pred(), 2, r"dims needs positive",
          setup=lambda ctx: ctx.edit_manifest(lambda m: m.update(dims={"image_emb": "16"}))),
    # python -m analysis --------------------------------------------------------------
    Probe("analysis-out-is-file", "analysis", report(out="{tmp}/file"), 2, r"--out .* is a file",
          setup=_touch("{tmp}/file")),
    Probe("analysis-deleted-shard", "analysis", report(), 2, r"is missing; rerun",
          setup=_delete),
    Probe("analysis-truncated-shard", "analysis", report(), 2, DAMAGED, setup=_truncate),
    Probe("analysis-invalid-manifest", "analysis", report(), 2, r"not valid JSON",
          setup=lambda ctx: (ctx.store / "manifest.json").write_text("")),
    # python -m data_prep (rejected before any model loads) -----------------------------
    Probe("prep-out-is-file", "prep",
          lambda ctx: prep_argv(draw_kaggle_tree(ctx.tmp / "data", bad_images=False),
                                {"dinov2": "x", "blip2": "x", "bert": "x"}, ctx.tmp / "f"),
          2, r"--run\.out .* is a file", setup=_touch("{tmp}/f")),
    Probe("prep-out-read-only", "prep",
          lambda ctx: prep_argv(draw_kaggle_tree(ctx.tmp / "data", bad_images=False),
                                {"dinov2": "x", "blip2": "x", "bert": "x"},
                                Path("/proc/sketchfusion/store")),
          2, r"--run\.out /proc/sketchfusion/store cannot be written"),
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store whose manifest records models, and one finished run on it."""
    root = tmp_path_factory.mktemp("faults")
    store = small_store(root / "store")
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["models"] = MODELS
    (store / "manifest.json").write_text(json.dumps(manifest))
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "disabled")
    fit_cli(store, root / "run", epochs=2)
    mp.undo()
    return store, root / "run"


def run_entry(entry: str, argv: list[str], monkeypatch) -> int:
    """Run one entry point in this process; its exit code."""
    try:
        if entry == "train":
            train.main(argv)
        elif entry == "predict":
            predict.main(argv)
        elif entry == "analysis":
            from analysis.__main__ import main

            return main(argv)
        elif entry == "prep":
            from data_prep.__main__ import _cli

            monkeypatch.setattr("sys.argv", ["python -m data_prep", *argv])
            return _cli()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


@pytest.mark.parametrize("probe", PROBES, ids=[p.id for p in PROBES])
def test_probe(probe: Probe, trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    store, run = trained
    ctx = Ctx(tmp=tmp_path, store=tmp_path / "store", ckpt=tmp_path / "model.ckpt",
              run=tmp_path / "finished")  # fmt: skip
    shutil.copytree(store, ctx.store)
    shutil.copytree(run, ctx.run)
    shutil.copy(run / "checkpoints" / "best.ckpt", ctx.ckpt)
    if probe.setup:
        probe.setup(ctx)
    capsys.readouterr()
    rc = run_entry(probe.entry, probe.argv(ctx), monkeypatch)
    err = capsys.readouterr().err
    assert rc == probe.rc, err[-3000:]
    assert "Traceback" not in err and NO_ADVICE not in err
    if probe.message:
        lines = [line for line in err.splitlines() if line.strip()]
        assert any(__import__("re").search(probe.message, line) for line in lines), err[-3000:]
    if probe.check:
        probe.check(ctx)


def test_probe_table_covers_every_entry_point():
    assert {p.entry for p in PROBES} == {"train", "predict", "analysis", "prep"}
    assert len({p.id for p in PROBES}) == len(PROBES)
