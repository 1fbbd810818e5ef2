"""feature_store/compat.py: each shim against the installed release, and no other module
using another library's private names.

A shim test fails when the private name it relies on is gone or behaves otherwise, which
is what a release outside pyproject.toml's bounds would show first.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import datasets
import lightning as L
import pyarrow as pa
import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import WandbLogger

from feature_store import compat

REPO = Path(__file__).resolve().parents[1]
ADAPTER = REPO / "feature_store" / "compat.py"
OUR_PACKAGES = {"fusion", "feature_store", "data_prep", "analysis", "sketchfusion", "bench",
                "tools", "train", "predict", "tests"}  # fmt: skip


# --- datasets --------------------------------------------------------------------------


def test_dataset_fingerprint_changes_with_the_rows():
    a = datasets.Dataset.from_dict({"x": [1, 2, 3]})
    same, other = datasets.Dataset.from_dict({"x": [1, 2, 3]}), a.map(lambda r: {"x": r["x"] + 1})
    assert isinstance(compat.dataset_fingerprint(a), str)
    assert compat.dataset_fingerprint(a) == compat.dataset_fingerprint(same)
    assert compat.dataset_fingerprint(a) != compat.dataset_fingerprint(other)
    assert compat.dataset_fingerprint({"x": [1]}) is None  # not a dataset


def test_dataset_state_has_the_keys_save_to_disk_writes(tmp_path):
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"x": [1, 2, 3]}).save_to_disk(str(saved))
    real = json.loads((saved / compat.STATE_FILE).read_text())
    ours = compat.dataset_state(["a.arrow"], "f00d", "train")
    assert set(ours) == set(real)
    files, _ = compat.dataset_files(saved)
    assert files and all((saved / f).is_file() for f in files)
    assert sum(len(datasets.Dataset.from_file(str(saved / f))) for f in files) == 3


def _shard(path: Path, values: list[int]) -> None:
    from datasets.arrow_writer import ArrowWriter

    feats = datasets.Features({"x": datasets.Value("int64")})
    with ArrowWriter(features=feats, path=str(path)) as writer:
        writer.write_table(pa.table({"x": pa.array(values, type=pa.int64())}))
        writer.finalize()


def test_load_from_disk_reads_the_files_of_a_written_state_in_their_order(tmp_path):
    _shard(tmp_path / "b.arrow", [3, 4, 5])
    _shard(tmp_path / "a.arrow", [0, 1, 2])
    state = compat.dataset_state(["b.arrow", "a.arrow"], "cafe", "val")
    (tmp_path / compat.STATE_FILE).write_text(json.dumps(state))
    datasets.DatasetInfo(features=datasets.Features({"x": datasets.Value("int64")})
                         ).write_to_directory(str(tmp_path))  # fmt: skip
    loaded = datasets.load_from_disk(str(tmp_path))
    assert loaded["x"] == [3, 4, 5, 0, 1, 2]
    assert loaded.split == "val"
    assert compat.dataset_files(tmp_path) == (["b.arrow", "a.arrow"], "cafe")


# --- argparse --------------------------------------------------------------------------


def test_option_strings_lists_every_option_of_a_parser():
    parser = ArgumentParser()
    parser.add_argument("--model.dropout", type=float, default=0.1)
    parser.add_argument("-n", "--name", type=str, default="x")
    found = compat.option_strings(parser)
    assert {"--model.dropout", "-n", "--name", "-h", "--help"} <= set(found)
    text = parser.format_help()
    assert all(s in text for s in found)
    actions = {a.dest: a for a in compat.parser_actions(parser)}
    assert actions["model.dropout"].default == 0.1 and actions["name"].option_strings == [
        "-n",
        "--name",
    ]


# --- Lightning: ModelCheckpoint and LightningModule ------------------------------------


class LoggingModel(BoringModel):
    """Lightning's demo model, logging its validation loss for ``monitor``."""

    def validation_step(self, batch, batch_idx):
        out = super().validation_step(batch, batch_idx)
        self.log("valid_loss", out["x"])
        return out


def _fit(tmp_path: Path, callback: ModelCheckpoint, epochs: int = 1) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs, limit_train_batches=2, limit_val_batches=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
        accelerator="cpu", default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(LoggingModel())
    return trainer


@pytest.mark.parametrize("on_train_epoch_end", [True, False])
def test_saves_on_train_epoch_end_follows_the_callbacks_setting(tmp_path, on_train_epoch_end):
    callback = ModelCheckpoint(dirpath=tmp_path, save_on_train_epoch_end=on_train_epoch_end)
    trainer = L.Trainer(logger=False, callbacks=[callback], accelerator="cpu")
    assert compat.saves_on_train_epoch_end(callback, trainer) is on_train_epoch_end


def test_last_checkpoint_shims_see_and_write_last_ckpt(tmp_path):
    callback = ModelCheckpoint(dirpath=tmp_path, save_last=True, monitor="valid_loss",
                               filename="best")  # fmt: skip
    trainer = L.Trainer(logger=False, callbacks=[callback], accelerator="cpu")
    assert not compat.last_saved_now(callback, trainer)  # nothing saved yet
    trainer = _fit(tmp_path, callback)
    last = tmp_path / "last.ckpt"
    assert callback.last_model_path == str(last)
    assert compat.last_saved_now(callback, trainer)  # Lightning saved it at the fit's end
    last.unlink()
    compat.save_last_checkpoint(callback, trainer)
    assert torch.load(last, weights_only=False)["global_step"] == trainer.global_step == 2
    assert compat.last_saved_now(callback, trainer)
    assert compat.attached_trainer(trainer.lightning_module) is trainer


def test_a_top_k_save_alone_is_not_a_last_save(tmp_path):
    callback = ModelCheckpoint(dirpath=tmp_path, save_last=False, monitor="valid_loss")
    trainer = _fit(tmp_path, callback)
    assert callback.best_model_path and not callback.last_model_path
    assert not compat.last_saved_now(callback, trainer)


def test_the_leafspec_warning_comes_from_the_module_named(tmp_path):
    with pytest.warns(FutureWarning, match="LeafSpec") as caught:
        _fit(tmp_path, ModelCheckpoint(dirpath=tmp_path))
    modules = {
        ".".join(Path(w.filename).with_suffix("").parts[-4:])
        for w in caught if "LeafSpec" in str(w.message)
    }  # fmt: skip
    assert modules == {"lightning.pytorch.utilities._pytree"}
    assert all(re.fullmatch(compat.LIGHTNING_PYTREE_MODULE, m) for m in modules)


def test_fit_may_stop_waits_for_min_steps(tmp_path):
    trainer = L.Trainer(min_steps=3, max_steps=3, logger=False, accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))  # fmt: skip
    assert not compat.fit_may_stop(trainer)  # no step yet
    trainer.fit(BoringModel())
    assert trainer.global_step == 3 and compat.fit_may_stop(trainer)
    assert compat.fit_may_stop(L.Trainer(logger=False, accelerator="cpu", min_epochs=0))


def test_attached_trainer_is_none_for_a_module_on_its_own():
    module = BoringModel()
    assert compat.attached_trainer(module) is None
    with pytest.raises(RuntimeError):
        module.trainer  # noqa: B018 - the public property raises instead


def test_run_csv_logger_writes_what_lightnings_csv_logger_writes(tmp_path):
    # fusion/loggers.py:RunCSVLogger is built on the public Logger instead of overriding
    # CSVLogger's private writer hooks: the same files, row for row.
    from lightning.pytorch.loggers import CSVLogger

    from fusion.loggers import RunCSVLogger

    class HparamsModel(LoggingModel):
        def __init__(self, lr: float = 0.1):
            super().__init__()
            self.save_hyperparameters()

    theirs, ours = (
        CSVLogger(tmp_path / "theirs", name="", version=""),
        RunCSVLogger(tmp_path / "ours"),
    )
    trainer = L.Trainer(
        max_epochs=2, limit_train_batches=3, limit_val_batches=1, log_every_n_steps=1,
        logger=[theirs, ours], enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(HparamsModel())
    for name in ("metrics.csv", "hparams.yaml"):
        expected = (tmp_path / "theirs" / name).read_text()
        assert (tmp_path / "ours" / name).read_text() == expected, name
    assert "valid_loss" in (tmp_path / "ours" / "metrics.csv").read_text().splitlines()[0]
    assert "lr: 0.1" in (tmp_path / "ours" / "hparams.yaml").read_text()
    assert (ours.log_dir, ours.save_dir) == (str(tmp_path / "ours"),) * 2


# --- Lightning: WandbLogger ------------------------------------------------------------


def test_wandb_logger_shims(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    logger = WandbLogger(save_dir=str(tmp_path), project="before", offline=True, log_model=False)
    assert compat.wandb_logger_offline(logger)
    assert not compat.wandb_logger_logs_model(logger)
    assert compat.wandb_logger_logs_model(WandbLogger(log_model="all", project="p"))
    assert not compat.wandb_logger_offline(WandbLogger(project="p"))
    assert compat.wandb_run_started(logger) is None
    init = compat.wandb_init_arguments(logger)
    assert init["project"] == "before" and init["dir"] == str(tmp_path)

    compat.set_wandb_identity(logger, {"project": "after", "dir": str(tmp_path / "w"),
                                       "name": "run-1", "id": "abc123"})  # fmt: skip
    assert (logger.name, logger.version, logger.save_dir) == ("after", "abc123",
                                                              str(tmp_path / "w"))  # fmt: skip
    assert compat.wandb_run_started(logger) is None  # reading them started nothing

    init.update(project="after", id="abc123", name="run-1", dir=str(tmp_path))
    run = compat.restart_wandb_run(logger)  # starts with the changed arguments
    try:
        assert compat.wandb_run_started(logger) is run is logger.experiment
        assert (run.id, run.name, run.project) == ("abc123", "run-1", "after")
    finally:
        run.finish()


def test_wandb_staging_dir_is_a_directory_path():
    path = compat.wandb_staging_dir()
    assert isinstance(path, Path) and path.is_absolute()


# --- nobody else -----------------------------------------------------------------------

# The private names of other libraries this project once used or the adapter uses.
PRIVATE = {
    "_prepare_subcommand_parser", "_run_subcommand", "_parse_ckpt_path", "_get",
    "_save_last_checkpoint", "_monitor_candidates", "_should_save_on_train_epoch_end",
    "_last_global_step_saved", "_last_checkpoint_saved", "_ExperimentWriter",
    "_check_log_dir_exists", "_record_new_keys", "_fs", "_trainer", "_wandb_init",
    "_experiment", "_offline", "_log_model", "_project", "_save_dir", "_trial_id",
    "_storage", "_actions", "_tokenizer", "_data_files", "_fingerprint",
    "_can_stop_early", "_run_early_stopping_check",
}  # fmt: skip
# Internal modules of other libraries (their packages' public API is elsewhere).
INTERNAL_MODULES = ("wandb.sdk", "datasets.utils", "lightning.fabric.utilities.logger")


def _package_files() -> list[Path]:
    roots = ["fusion", "feature_store", "data_prep", "analysis", "sketchfusion", "bench",
             "tools"]  # fmt: skip
    files = [p for r in roots for p in (REPO / r).rglob("*.py")]
    return [*files, REPO / "train.py", REPO / "predict.py"]


def _private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    name = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    found = []
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE:
            found.append(f"{where} .{node.attr}")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in PRIVATE:
            found.append(f"{where} overrides {node.name}")
        elif isinstance(node, ast.Constant) and node.value in PRIVATE | {"state.json"}:
            found.append(f"{where} {node.value!r}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            if top in OUR_PACKAGES or node.module == "__future__":
                continue
            parts = node.module.split(".")
            names = [a.name for a in node.names]
            if (
                any(p.startswith("_") for p in parts)
                or any(n.startswith("_") for n in names)
                or node.module.startswith(INTERNAL_MODULES)
            ):
                found.append(f"{where} from {node.module} import {', '.join(names)}")
    return found


def test_no_module_but_the_adapter_uses_another_librarys_private_names():
    files = [p for p in _package_files() if p != ADAPTER]
    assert len(files) > 50
    found = [use for path in files for use in _private_uses(path)]
    assert found == [], "use feature_store/compat.py (or a public API) for: " + "; ".join(found)


def test_the_scan_finds_each_kind_of_private_use(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from lightning.fabric.loggers.csv_logs import _ExperimentWriter\n"
        "from wandb.sdk.lib.runid import generate_id\n"
        "def f(logger, cli):\n"
        "    logger._experiment.finish()\n"
        "    return cli._get(cli.config, 'trainer'), {'_data_files': []}\n"
        "class C:\n"
        "    def _parse_ckpt_path(self): ...\n"
    )
    uses = _private_uses(sample)
    assert len(uses) == 6, uses
    assert _private_uses(ADAPTER)  # the adapter itself is where they are


def test_the_adapter_is_the_one_that_names_them():
    # Each shim's private names are in its docstring, and the module imports nothing heavy.
    tree = ast.parse(ADAPTER.read_text())
    top_imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert {a.name for n in top_imports for a in n.names} <= {"annotations", "json", "os",
                                                               "Path"}  # fmt: skip
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            private = {a.attr for a in ast.walk(node) if isinstance(a, ast.Attribute)
                       and a.attr.startswith("_")} - {"__name__"}  # fmt: skip
            doc = ast.get_docstring(node) or ""
            assert all(name in doc for name in private), (node.name, private)


# The libraries whose private names the adapter uses: pyproject allows only the minor
# releases the shims were tested with (a new minor release may rename them).
ADAPTED = ("lightning", "wandb", "datasets")


@pytest.mark.parametrize("name", ADAPTED)
def test_pyproject_bounds_an_adapted_library_to_its_tested_minor_release(name):
    from importlib.metadata import version

    import tomllib
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (req,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == name]
    pinned = dict(
        line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )[name]  # fmt: skip
    tested = Version(pinned)
    assert req.specifier.contains(pinned) and req.specifier.contains(version(name))
    assert not req.specifier.contains(f"{tested.major}.{tested.minor + 1}.0"), str(req)
