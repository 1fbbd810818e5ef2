"""data_prep: images -> BLIP-2 captions, BERT caption embeddings, DINOv2 features -> store.

$ python -m data_prep --config configs/prep/demo.yaml          # offline demo, stores/demo
$ python -m data_prep --config configs/prep/kaggle.yaml --input.root /data/sketch

From Python (train.py builds the demo store this way when it is missing)::

    import data_prep
    store_dir = data_prep.main(["--config", "configs/prep/demo.yaml"])

Importing the package is cheap: torch, transformers and Lightning load on first use.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> Path:
    """Parse ``argv`` (sys.argv[1:] when None), build or resume the store, return its dir."""
    from data_prep.config import parse_config
    from data_prep.pipeline import run

    cfg, plain = parse_config(argv)
    return run(cfg, plain)
