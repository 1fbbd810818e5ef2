"""The command line: configs parse, overrides apply, the demo builds, errors are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import data_prep
from data_prep.config import POOLINGS_IMAGE, parse_config
from feature_store import load_arrays, open_store
from tests.fixtures_extraction import (  # noqa: F401 - tiny_blip2s, tiny_models: fixtures
    draw_kaggle_tree,
    prep_argv,
    tiny_blip2s,
    tiny_models,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs" / "prep").glob("*.yaml"))


def _run(args: list[str], cwd: Path, code: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "data_prep", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_prep_config_parses(path):
    cfg, plain = parse_config(["--config", str(path)])
    assert cfg.run.out and plain["image"]["pooling"] in POOLINGS_IMAGE


def test_command_line_overrides_the_file():
    demo = str(REPO / "configs" / "prep" / "demo.yaml")
    cfg, plain = parse_config(["--config", demo, "--image.pooling", "mean", "--run.devices", "2"])
    assert cfg.image.pooling == "mean" == plain["image"]["pooling"] and cfg.run.devices == 2
    assert cfg.caption.max_new_tokens == 8  # from the file
    with pytest.raises(ValueError, match="image.pooling"):
        parse_config(["--config", demo, "--image.pooling", "max"])


def test_import_is_cheap(tmp_path):
    res = _run([], tmp_path, code="import sys, data_prep; print('torch' in sys.modules)")
    assert res.returncode == 0 and res.stdout.strip() == "False"


def test_user_errors_are_one_line_not_a_traceback(tmp_path):
    res = _run(["--input.root", str(tmp_path / "nowhere")], tmp_path)
    assert res.returncode == 2
    assert "data_prep: error:" in res.stderr and "Traceback" not in res.stderr
    assert str(tmp_path / "nowhere") in res.stderr


@pytest.mark.slow
def test_demo_config_builds_the_demo_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo's paths are relative to the current directory
    out = data_prep.main(["--config", str(REPO / "configs/prep/demo.yaml"), "--run.progress",
                          "false"])  # fmt: skip
    assert out == Path("stores/demo")
    info = open_store(out)
    hidden = json.loads((tmp_path / "demo/models/dinov2/config.json").read_text())["hidden_size"]
    assert info.num_classes == 10 and info.image_dim == 2 * hidden  # cls+mean
    assert all((tmp_path / "demo/models" / m / "config.json").is_file()
               for m in ("dinov2", "blip2", "bert"))  # fmt: skip
    train = load_arrays(out, "train")
    assert sorted(set(train.labels.tolist())) == list(range(10))
    # Untrained, but the random captioner still looks at the image: captions vary.
    assert len(set(train.captions)) > 1
    assert info.manifest["splits"]["train"]["failed"] == 0


@pytest.mark.slow
def test_demo_config_keeps_a_model_override(tmp_path, tiny_models, tiny_blip2s):  # noqa: F811
    """--caption.model X with the demo config: X is used and recorded, not the tiny OPT."""
    t5 = str(tiny_blip2s["t5"])
    models = tiny_models["dinov2"].parent  # the session's tiny models: nothing to build
    demo = ["--config", str(REPO / "configs/prep/demo.yaml"), "--demo.images",
            str(tmp_path / "images"), "--demo.models", str(models),
            "--demo.num_classes", "2", "--demo.per_class", "{train: 2, val: 1, test: 1}",
            "--run.out", str(tmp_path / "store"), "--run.progress", "false"]  # fmt: skip
    out = data_prep.main([*demo, "--caption.model", t5, "--caption.prompt", ""])
    m = open_store(out).manifest
    assert m["models"]["caption"]["local_path"] == str(Path(t5).resolve())
    assert m["config"]["caption"]["model"] == t5
    # The models left at their defaults are the demo's tiny ones, and recorded as such.
    assert m["config"]["image"]["model"] == str(models / "dinov2")
    assert m["models"]["text"]["local_path"] == str((models / "bert").resolve())
    with pytest.raises(ValueError, match="input.root .* demo"):
        data_prep.main([*demo, "--input.root", str(tmp_path)])


def test_hf_imagefolder_dataset(tmp_path, tiny_models):  # noqa: F811
    tree = draw_kaggle_tree(tmp_path / "kaggle", train=2, val=1, test=0, bad_images=False)
    data = tmp_path / "hf"
    data.mkdir()
    (tree / "train_images").rename(data / "train")
    (tree / "val_images").rename(data / "validation")
    argv = prep_argv(tree, tiny_models, tmp_path / "store", "--input.kind", "hf",
                     "--input.dataset", "imagefolder", "--input.data_dir", str(data),
                     "--input.splits", "{train: train, val: validation}")  # fmt: skip
    out = data_prep.main(argv)
    info = open_store(out)
    assert info.class_names == ["cat", "dog", "fish"] and info.splits == ["train", "val"]
    train = load_arrays(out, "train")
    assert len(train) == 6 and sorted(train.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert np.isfinite(train.image_emb).all()
