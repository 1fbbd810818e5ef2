"""Fusion heads over a feature store: training (``train.py``) and prediction (``predict.py``).

- :mod:`fusion.heads`: plain ``nn.Module`` heads and their registry ``HEADS``;
- :mod:`fusion.datamodule`: the store's embeddings as tensors, batched by index;
- :mod:`fusion.module`: the thin LightningModule (loss, metrics, optimiser, schedule);
- :mod:`fusion.cli`: LightningCLI, run directories, loggers and checkpoints;
- :mod:`fusion.predict`: ``predict_probs`` and the submission writer.
"""
