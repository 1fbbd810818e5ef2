"""Shared fixtures: everything runs on the CPU, offline, in seconds."""

import os
import sys

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _plain_argv():
    # Entry points are called as main([...]) in tests; pytest's own flags in sys.argv would
    # otherwise look like a second command line to LightningCLI (and it warns about that).
    saved, sys.argv = sys.argv, [sys.argv[0]]
    yield
    sys.argv = saved
