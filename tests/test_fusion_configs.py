"""Every training YAML under configs/ (not configs/prep/) builds its model, data, trainer;
each experiment config, composed from configs/base.yaml, resolves to what it did before.

$ python -m pytest -q tests/test_fusion_configs.py
"""

import copy
import inspect
from pathlib import Path

import pytest
import yaml

from fusion.cli import FusionCLI
from fusion.commands.tune import load_space
from fusion.heads import HEAD_ALIASES, HEADS, SkipMLP, head_members
from tests.fixtures_training import REPO, small_store

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
EXPERIMENTS = [p for p in CONFIGS if p.stem != "base"]
REPORT = sorted((REPO / "configs" / "report").glob("*.yaml"))
BEFORE = yaml.safe_load(
    (REPO / "tests" / "fixtures" / "configs_before_composition.yaml").read_text()
)
# Head options an experiment file gained after the composition, which its old form predates
# (configs/concat.yaml's set_penalty, issue 20): config -> option -> value.
ADDED_SINCE = {"concat": {"set_penalty": 2.0}}


def resolved(capsys, *configs: Path) -> dict:
    """``train.py fit --config ... --print_config``: the config every option resolves to."""
    args = ["fit"] + [a for c in configs for a in ("--config", str(c))] + ["--print_config"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        FusionCLI(args=args)
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_the_table_1_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"visual_only", "concat", "dual_logit_l0.1", "dual_logit_l0.3"} <= names
    assert {"dual_logit_softmax", "demo", "base"} <= names


def flat(node: dict, prefix: str = "") -> dict:
    """``{"model": {"optimizer": {"lr": 1}}}`` as ``{"model.optimizer.lr": 1}``."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def effective(spec: dict) -> dict:
    """``spec`` with the values its head trains with: a head option left None is the head's
    own default (its constructor's; branch_loss 0.5, the module's), and a weight-decay sweep
    stands for the optimizer's single weight decay, which it replaces."""
    model = copy.deepcopy(spec["model"])
    head = HEAD_ALIASES.get(model["head"], model["head"])
    accepted = inspect.signature(HEADS[head].__init__).parameters
    for name, value in model["head_options"].items():
        if value is None and name in accepted:
            model["head_options"][name] = accepted[name].default
        elif value is None and name == "branch_loss" and head in ("gated", "dual_logit"):
            model["head_options"][name] = 0.5
    if model["weight_decay_sweep"]:
        model["optimizer"]["weight_decay"] = None
    return {**spec, "model": model}


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.stem)
def test_composed_config_resolves_to_its_old_values(config: Path, tmp_path, capsys):
    # The old file (full, flat model options, before base.yaml and the option groups
    # existed) and the composed one give the same complete config: every Trainer, model,
    # data and callback value the fit uses. The old file's flat options are read with one
    # deprecation line each.
    old = tmp_path / config.name
    old.write_text(yaml.safe_dump(BEFORE[config.stem]))
    new = resolved(capsys, config)
    assert "deprecated" not in capsys.readouterr().err
    args = ["fit", "--config", str(old), "--print_config"]
    with pytest.raises(SystemExit):
        FusionCLI(args=args)
    out, err = capsys.readouterr()
    before = yaml.safe_load(out)
    before["model"]["head_options"].update(ADDED_SINCE.get(config.stem, {}))
    assert effective(new) == effective(before)
    assert "train.py: --model.lr is deprecated, read as --model.optimizer.lr" in err


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_files_say_only_what_differs(config: Path):
    # Each experiment file includes base.yaml first and sets no value base.yaml already has.
    spec = yaml.safe_load(config.read_text())
    assert list(spec)[0] == "config" and spec["config"] == "base.yaml"
    base = yaml.safe_load((config.parent / "base.yaml").read_text())
    flat_base = flat(base)
    repeated = {k for k, v in spec.items() if k in flat_base and flat_base[k] == v}
    assert not repeated, f"{config.name} repeats base.yaml's {sorted(repeated)}"
    assert len(config.read_text().splitlines()) < 25


def test_base_given_twice_changes_nothing(capsys):
    # `--config configs/base.yaml --config configs/concat.yaml` (LightningCLI's usual
    # composition) resolves like the experiment file alone.
    concat = REPO / "configs" / "concat.yaml"
    assert resolved(capsys, REPO / "configs" / "base.yaml", concat) == resolved(capsys, concat)


@pytest.mark.parametrize("config", CONFIGS + REPORT, ids=lambda p: p.parent.name + "/" + p.stem)
def test_config_instantiates(config: Path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    spec = resolved(capsys, config)
    store = small_store(tmp_path / "store", num_classes=6)
    cli = FusionCLI(
        args=["--config", str(config), "--data.store", str(store)]
        + ["--runs_root", str(tmp_path / "runs")],
        run=False,
    )
    assert cli.model.head.kind == spec["model"]["head"]
    hp = cli.model.hparams
    # Dims and classes come from the store, never from the YAML.
    assert (hp.set_dims, len(hp.class_names)) == ({"image": 16, "text": 12}, 6)
    for key, value in spec["model"].items():
        assert hp[key] == (list(value) if isinstance(value, tuple) else value), key
    if spec["trainer"]["max_epochs"] is not None:
        assert cli.trainer.max_epochs == spec["trainer"]["max_epochs"]
    else:  # the recipe: length in steps from the store's rows (fusion/recipe.py)
        batch = cli.datamodule.batch_size
        assert cli.trainer.max_steps == cli.config_init["recipe"].steps(6 * 24, batch)
    # The run is named after the experiment file, never after the base it includes.
    assert cli.trainer.default_root_dir.startswith(str(tmp_path / "runs" / config.stem))
    assert cli.trainer.checkpoint_callback.monitor == spec["checkpoint"]["monitor"]
    decays = spec["model"]["weight_decay_sweep"]
    members = head_members(cli.model.head)  # one head per weight decay of a sweep
    assert len(members) == (len(decays) if decays else 1)
    options = effective(spec)["model"]["head_options"]
    if spec["model"]["head"] == "dual_logit":
        for head in members:
            assert head.weighting == options["weighting"]
            assert head.penalty_lambda == options["penalty_lambda"]
    if options.get("linear_skip") and options["hidden_dims"]:  # reached every member
        for head in members:
            assert any(isinstance(m, SkipMLP) for m in head.modules())


@pytest.mark.parametrize("space", sorted((REPO / "configs" / "search").glob("*.yaml")), ids=str)
def test_search_spaces_load_and_name_an_experiment(space: Path):
    assert load_space(space)
    assert (REPO / "configs" / space.name).is_file()
