"""Fusion heads over a feature store: training (``train.py``) and prediction (``predict.py``).

- :mod:`fusion.heads`: plain ``nn.Module`` heads and their registry ``HEADS``;
- :mod:`fusion.datamodule`: the store's embeddings as tensors, batched by index;
- :mod:`fusion.module`: the thin LightningModule (loss, metrics, optimiser, schedule);
- :mod:`fusion.predict`: checkpoints, ``predict_probs`` and ``submit``;
- :mod:`fusion.combine`: the one way to combine models (checkpoints, CV directories,
  ``.probs.npz`` files), over :mod:`fusion.ensemble` (saved probabilities) and
  :mod:`fusion.stacking` (the fitted pooling), and ``predict_submission``;
- :mod:`fusion.submission`: submissions; :mod:`fusion.runs`: run directories;
- :mod:`fusion.errors`, :mod:`feature_store.atomic`: the typed errors, the one atomic writer.

The command layer sits above that library: :mod:`fusion.cli` (LightningCLI: fit, validate,
test, predict), :mod:`fusion.commands` (predict.py, probe, stack, cv, tune) and
:mod:`fusion.exit`, the one place errors become exit codes. Nothing below imports from
above (tests/test_layers.py).
"""
