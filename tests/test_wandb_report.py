"""W&B dashboards of a fit, read back from the offline run files (issue 12)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import train
from fusion.loggers import RUN_ID_FILE, wandb_mode_and_reason, wandb_settings
from fusion.wandb_report import (
    PAIR_COLUMNS,
    TABLE_COLUMNS,
    confused_pairs,
    flatten,
    log_val_report,
    misclassified_first,
)
from tests.fixtures_training import (
    DEMO_CONFIG,
    fit_cli,
    read_csv,
    small_store,
    wandb_artifacts,
    wandb_config,
    wandb_history,
    wandb_records,
    wandb_run_files,
    wandb_run_id,
    wandb_summary,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return small_store(tmp_path_factory.mktemp("store") / "s")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_RUN_GROUP", "WANDB_TAGS", "WANDB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)


def run_record(run_file: Path):
    return next(r.run for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run")


def logged_table(run_file: Path, key: str) -> dict:
    """The JSON of table ``key`` as the run logged it (media file beside the run file)."""
    path = wandb_summary(run_file)[f"{key}/path"]
    return json.loads((run_file.parent / "files" / path).read_text())


# -- a fit, read back ---------------------------------------------------------------------


# Per-row LayerNorm instead of the default standardisation: with it this fit's val accuracy
# peaks early and falls, which the summary test needs (best epoch != last epoch).
LAYERNORM = ("--model.head_options.input_norm", "layernorm")


@pytest.mark.slow
def test_offline_fit_dashboard(tmp_path, offline, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "my-project")  # W&B's variable beats our default
    run = tmp_path / "run"
    # Noisy embeddings and a high learning rate: val accuracy peaks early, so best != last.
    store = small_store(tmp_path / "s", noise=3.0)
    # fusion_lr_scale pinned: the trajectory this premise was checked on (default now 30).
    fit_cli(store, run, "--wandb.tags", "[a, b]", "--model.optimizer.lr", "0.3", *LAYERNORM,
            "--model.optimizer.fusion_lr_scale", "10", epochs=6)  # fmt: skip
    (run_file,) = wandb_run_files(run)
    record = run_record(run_file)
    assert record.run_id == (run / RUN_ID_FILE).read_text().strip()
    assert (record.project, record.run_group, record.job_type) == ("my-project", "demo", "train")
    assert record.display_name == "run" and list(record.tags) == ["a", "b"]

    # The whole resolved config, flattened, plus the store's essentials and versions.
    config = wandb_config(run_file)
    assert config["model.head"] == "dual_logit"
    assert config["data.batch_size"] == 32
    assert config["trainer.max_epochs"] == 6
    assert config["model.optimizer.lr"] == 0.3
    assert config["early_stopping.monitor"] == "val/acc_top1"
    assert config["store.rows.val"] == 40 and config["store.rows.train"] == 120
    assert (config["store.dims.image_emb"], config["store.dims.text_emb"]) == (16, 12)
    assert config["store.num_classes"] == 5
    assert {"versions.torch", "versions.lightning", "versions.wandb"} <= set(config)
    assert "_instantiator" not in config

    # Summary: the best epoch, checked against the per-epoch CSV log.
    rows = [r for r in read_csv(run / "metrics.csv") if r["val/acc_top1"]]
    accs = [float(r["val/acc_top1"]) for r in rows]
    losses = [float(r["val/loss"]) for r in rows]
    summary = wandb_summary(run_file)
    assert summary["val/acc_top1"] == {"max": pytest.approx(max(accs))}
    assert summary["val/loss"] == {"min": pytest.approx(min(losses))}
    assert summary["best/val/acc_top1"] == pytest.approx(max(accs))
    assert summary["best/val/loss"] == pytest.approx(min(losses))
    assert summary["best/epoch"] == int(rows[int(np.argmax(accs))]["epoch"])
    assert max(accs) > accs[-1] and min(losses) < losses[-1]  # so "best" is not "last"
    alphas = [r for r in read_csv(run / "metrics.csv") if r["fusion/alpha"]]
    assert summary["fusion/alpha"] == pytest.approx(float(alphas[-1]["fusion/alpha"]))

    # Learning rate at every step, as its own chart.
    history = wandb_history(run_file)
    lr_keys = {k for r in history for k in r if k.startswith("lr-")}
    assert lr_keys
    steps = len([r for r in history if "fusion/alpha" in r])
    assert len([r for r in history if sorted(lr_keys)[0] in r]) == steps

    # Predictions table and W&B's own confusion matrix (5 classes: 25 cells).
    table = logged_table(run_file, "val/predictions")
    assert table["columns"] == TABLE_COLUMNS
    assert len(table["data"]) == 40
    correct = [row[-1] for row in table["data"]]
    assert correct == sorted(correct)  # misclassified rows first
    val = {r["id"]: r for r in read_csv(run / "val_predictions.csv")}
    for row in table["data"]:
        assert int(row[4][-3:]) == int(val[row[0]]["pred"])
        assert row[5] == pytest.approx(float(val[row[0]]["confidence"]), abs=1e-4)
    assert summary["val/confusion_matrix_table/nrows"] == 25

    # Artifacts a later run can use_artifact: the best checkpoint, the store manifest.
    arts = {a["name"]: a for a in wandb_artifacts(run_file)}
    model = arts[f"model-{record.run_id}"]
    assert model["type"] == "model" and "best" in model["aliases"]
    assert model["files"] == ["model.ckpt"]
    assert arts["store-s"]["type"] == "dataset" and arts["store-s"]["files"] == ["manifest.json"]


@pytest.mark.slow
def test_resume_continues_the_same_wandb_run(store, tmp_path, offline):
    run = tmp_path / "run"
    fit_cli(store, run, "--wandb_project", "legacy", epochs=1)  # the old option still works
    fit_cli(store, run, "--wandb_project", "legacy", "--ckpt_path", "last", epochs=3)
    first, second = wandb_run_files(run, count=2)
    assert run_record(first).project == run_record(second).project == "legacy"
    run_id = (run / RUN_ID_FILE).read_text().strip()
    assert wandb_run_id(first) == wandb_run_id(second) == run_id
    # The resumed part's summary still ranks by the best of all three epochs.
    accs = [float(r["val/acc_top1"]) for r in read_csv(run / "metrics.csv") if r["val/acc_top1"]]
    assert len(accs) == 3
    assert wandb_summary(second)["best/val/acc_top1"] == pytest.approx(max(accs))


@pytest.mark.slow
def test_user_wandb_logger_with_log_model(store, tmp_path, offline, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # No WANDB_MODE and no API key, as a new user: the user's logger must go offline too.
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    run = tmp_path / "run"
    args = ["fit", "--config", DEMO_CONFIG, "--data.store", str(store), "--run_dir", str(run)]
    args += ["--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false"]
    train.main([*args, "--trainer.logger", "WandbLogger", "--trainer.logger.log_model", "true"])
    # The run directory layout holds with the user's logger; nothing lands in the cwd.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == ["run"]
    for name in ("config.yaml", "metrics.csv", "val_predictions.csv", RUN_ID_FILE):
        assert (run / name).is_file(), name
    (run_file,) = wandb_run_files(run)
    run_id = wandb_run_id(run_file)
    models = [a for a in wandb_artifacts(run_file) if a["name"] == f"model-{run_id}"]
    # Lightning's logger uploads best and last; we add no third copy.
    assert len(models) == 2 and any("best" in a["aliases"] for a in models)
    assert wandb_config(run_file)["trainer.logger.class_path"].endswith("WandbLogger")


@pytest.mark.slow
def test_user_csv_logger_keeps_run_metrics(store, tmp_path, offline, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    logger = '{"class_path": "CSVLogger", "init_args": {"save_dir": "mylogs"}}'
    fit_cli(store, run, "--trainer.logger", logger, epochs=1)
    assert (run / "metrics.csv").is_file() and (run / "config.yaml").is_file()
    assert list(tmp_path.glob("mylogs/**/metrics.csv"))  # the user's own log as well
    assert not (run / "wandb").exists()  # no W&B logger asked for


@pytest.mark.slow
def test_demo_logs_its_submission(tmp_path, monkeypatch, offline):
    monkeypatch.chdir(tmp_path)
    small_store(tmp_path / "stores" / "demo", per_class={"train": 12, "val": 4, "test": 3})
    paths = train.run_demo(overrides=["--trainer.max_epochs=1"])
    (run_file,) = wandb_run_files(Path(paths["run directory"]))
    (sub,) = [a for a in wandb_artifacts(run_file) if a["type"] == "submission"]
    assert sub["name"] == f"submission-{wandb_run_id(run_file)}"
    assert sub["files"] == ["submission.csv", "submission.json", paths["test probabilities"].name]


# -- settings ------------------------------------------------------------------------------


def test_wandb_settings_precedence(tmp_path, monkeypatch, offline):
    run = tmp_path / "20260101-000000"
    s = wandb_settings(run, group="demo")
    assert (s["project"], s["group"], s["job_type"], s["name"]) == (
        "sketchfusion",
        "demo",
        "train",
        "20260101-000000",
    )
    monkeypatch.setenv("WANDB_PROJECT", "env-project")
    monkeypatch.setenv("WANDB_RUN_GROUP", "env-group")
    monkeypatch.setenv("WANDB_TAGS", "x,y")
    s = wandb_settings(run, group="demo")
    assert (s["project"], s["group"], s["tags"]) == ("env-project", "env-group", ["x", "y"])
    s = wandb_settings(run, group="demo", project="cli", group_override="g", tags=["t"])
    assert (s["project"], s["group"], s["tags"]) == ("cli", "g", ["t"])
    # A saved id wins: a resume continues the run.
    run.mkdir()
    (run / RUN_ID_FILE).write_text("abc123\n")
    assert wandb_settings(run, group="demo")["id"] == "abc123"


def test_offline_reason_is_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    mode, why = wandb_mode_and_reason()
    assert mode == "offline" and "API key" in why and "\n" not in why
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    mode, why = wandb_mode_and_reason()
    assert mode == "offline" and "no answer" in why and "127.0.0.1:9" in why


# -- the report's parts --------------------------------------------------------------------


def test_flatten_keeps_plain_lists_and_dots_nested_keys():
    flat = flatten({"model": {"head": "concat", "hidden_dims": [32, 16]}, "cb": [{"a": 1}]})
    assert flat == {"model.head": "concat", "model.hidden_dims": [32, 16], "cb": '[{"a": 1}]'}


def test_misclassified_first_caps_and_orders():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    pred = np.array([0, 2, 2, 0, 4, 1, 6, 7])  # rows 1, 3, 5 wrong
    rows = misclassified_first(labels, pred, max_rows=5)
    assert list(rows[:3]) == [1, 3, 5] and len(rows) == 5
    assert set(rows[3:]) <= {0, 2, 4, 6, 7}
    assert list(misclassified_first(labels, pred, max_rows=2)) in ([1, 3], [1, 5], [3, 5])


def test_confused_pairs_match_a_direct_count():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 500)
    pred = np.where(rng.random(500) < 0.6, labels, rng.integers(0, 7, 500))
    pairs = confused_pairs(labels, pred, 7, top=5)
    counts = {}
    for t, p in zip(labels, pred, strict=True):
        if t != p:
            counts[(t, p)] = counts.get((t, p), 0) + 1
    expected = sorted(counts.values(), reverse=True)[:5]
    assert [c for _, _, c, _ in pairs] == expected
    for t, p, c, share in pairs:
        assert counts[(t, p)] == c and share == pytest.approx(c / (labels == t).sum())


def test_many_classes_get_a_heatmap_pairs_and_a_capped_table(tmp_path):
    import wandb

    n, rows, cap = 60, 300, 50
    rng = np.random.default_rng(1)
    labels = rng.integers(0, n, rows)
    probs = rng.random((rows, n))
    probs[np.arange(rows), labels] += rng.random(rows) * 2  # about half right
    probs /= probs.sum(1, keepdims=True)
    image = tmp_path / "img.png"
    Image.new("RGB", (300, 200), "white").save(image)
    paths = [str(image) if i % 2 else str(tmp_path / "gone.png") for i in range(rows)]
    run = wandb.init(mode="offline", dir=str(tmp_path), project="t")
    try:
        logged = log_val_report(
            run,
            ids=[f"val_{i}" for i in range(rows)],
            labels=labels,
            probs=probs,
            class_names=[f"c{i}" for i in range(n)],
            captions=["a sketch"] * rows,
            paths=paths,
            out_dir=tmp_path,
            max_rows=cap,
            thumb_px=32,
        )
    finally:
        run.finish()
    assert "val/confusion_matrix" not in logged  # too many classes for W&B's own chart
    assert (tmp_path / "confusion_top.png").is_file()
    pairs = logged["val/confused_pairs"]
    assert pairs.columns == PAIR_COLUMNS and 0 < len(pairs.data) <= 50
    table = logged["val/predictions"]
    assert table.columns == TABLE_COLUMNS and len(table.data) == cap
    wrong = (probs.argmax(1) != labels).sum()
    assert [row[-1] for row in table.data] == [False] * min(wrong, cap) + [True] * (
        cap - min(wrong, cap)
    )
    thumbs = [row[1] for row in table.data]
    for row, thumb in zip(table.data, thumbs, strict=True):
        has_file = int(row[0].split("_")[1]) % 2 == 1
        assert (thumb is not None) == has_file
        if thumb is not None:
            assert max(thumb.image.size) == 32


def test_store_config_names_the_models_revisions_and_rows(tmp_path):
    from fusion.wandb_report import run_config

    store = small_store(tmp_path / "s")
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["models"] = {
        "image": {"name": "facebook/dinov2-base", "revision": "abc", "pooling": "cls+mean"},
        "caption": {"name": "Salesforce/blip2-opt-2.7b", "revision": "def"},
        "text": {"name": "bert-base-uncased", "revision": "123", "pooling": "cls"},
    }
    (store / "manifest.json").write_text(json.dumps(manifest))
    config = run_config(json.dumps({"data": {"store": str(store)}, "model": {"head": "concat"}}))
    assert config["model.head"] == "concat"
    assert config["store.models.image.name"] == "facebook/dinov2-base"
    assert config["store.models.image.pooling"] == "cls+mean"
    assert config["store.models.caption.revision"] == "def"
    assert config["store.models.text.name"] == "bert-base-uncased"
    assert config["store.rows.test"] == 20 and config["store.failed.val"] == 0
    # A store that cannot be read is named in the config, not a crash of the fit's logging.
    bad = run_config({"data": {"store": str(tmp_path / "missing")}})
    assert "manifest.json" in bad["store.error"]
