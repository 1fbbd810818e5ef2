"""Every experiment YAML under configs/ (not configs/prep/) builds its model, data, trainer."""

from pathlib import Path

import pytest
import yaml

from fusion.cli import FusionCLI
from tests.fixtures_training import REPO, small_store

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_the_table_1_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"visual_only", "concat", "dual_logit_l0.1", "dual_logit_l0.3"} <= names
    assert {"dual_logit_softmax", "demo"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_instantiates(config: Path, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    store = small_store(tmp_path / "store", num_classes=6)
    cli = FusionCLI(
        args=["--config", str(config), "--data.store", str(store)]
        + ["--runs_root", str(tmp_path / "runs")],
        run=False,
    )
    spec = yaml.safe_load(config.read_text())
    assert cli.model.head.kind == spec["model"]["head"]
    hp = cli.model.hparams
    # Dims and classes come from the store, never from the YAML.
    assert (hp.image_dim, hp.text_dim, len(hp.class_names)) == (16, 12, 6)
    for key, value in spec["model"].items():
        assert hp[key] == value, key
    if "max_epochs" in spec["trainer"]:
        assert cli.trainer.max_epochs == spec["trainer"]["max_epochs"]
    else:  # the recipe: length in steps from the store's rows (fusion/recipe.py)
        batch = cli.datamodule.batch_size
        assert cli.trainer.max_steps == cli.config_init["recipe"].steps(6 * 24, batch)
    assert cli.trainer.default_root_dir.startswith(str(tmp_path / "runs" / config.stem))
    assert cli.trainer.checkpoint_callback.monitor == "val/acc_top1"
    if spec["model"]["head"] == "dual_logit":
        weighting = spec["model"]["weighting"]
        assert cli.model.head.weighting == weighting
        if weighting == "penalty":
            assert cli.model.head.penalty_lambda == spec["model"]["penalty_lambda"]
