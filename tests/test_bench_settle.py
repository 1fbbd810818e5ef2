"""bench/bench_accuracy.py's settle measures and its gate recorder (the issue's goal that
fusion weights and gates reach their final regime within the first 20% of training)."""

import sys

import numpy as np
import torch
from fixtures_training import REPO, fit_cli, small_store

from feature_store import load_arrays
from fusion.heads import head_members
from fusion.module import FusionModule

sys.path.insert(0, str(REPO / "bench"))
from bench_accuracy import gate_settled, settled  # noqa: E402


def test_settled_is_the_share_after_which_a_series_stays_near_its_end():
    series = np.concatenate([np.linspace(0, 1, 30), np.ones(70)])  # reaches 1 at point 30
    # within 20% of the move (0.2) from point 24 on: linspace(0, 1, 30)[24] = 0.83
    assert settled(series) == 24 / 100
    bounce = series.copy()
    bounce[90] = 0.5  # leaves the band once late: not settled until after it
    assert settled(bounce) == 91 / 100


def test_gate_settled_uses_the_distance_of_every_row_to_its_final_gate(tmp_path):
    steps = np.array([0, 100, 200, 300, 400])
    final = np.array([0.9, 0.1, 0.9, 0.1])
    # Batch means stay at 0.5 throughout; the rows settle at step 200.
    gates = np.stack(
        [np.full(4, 0.5), np.full(4, 0.5), final + 0.02 * np.array([-1, 1, -1, 1]), final, final]
    )
    np.savez(tmp_path / "gates.npz", steps=steps, gates=gates)
    assert gate_settled(tmp_path / "gates.npz") == 200 / 400


def test_gate_recorder_saves_the_val_gate_of_the_final_weights(tmp_path):
    """With a weight-decay sweep, of the member chosen on val."""
    store = small_store(tmp_path / "s")
    cli = fit_cli(store, tmp_path / "run", "--model.head", "gated", "--trainer.logger", "false",
                  "--trainer.callbacks+=gate_recorder.GateRecorder", "--model.weight_decay_sweep=[0.001,0.1]",
                  epochs=3)  # fmt: skip
    with np.load(tmp_path / "run" / "gates.npz") as z:
        steps, gates = z["steps"], z["gates"]
    val = load_arrays(store, "val")
    assert steps[0] == 0 and steps[-1] == cli.trainer.global_step
    assert gates.shape == (len(steps), len(val.labels))
    last = FusionModule.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    with torch.no_grad():
        chosen = head_members(last.head)[last._chosen()]
        expected = chosen.gate_values(
            torch.as_tensor(val.image_emb), torch.as_tensor(val.text_emb)
        )[:, 0]
    np.testing.assert_allclose(gates[-1], expected.numpy(), atol=1e-5)
    assert not np.allclose(gates[0], gates[-1])  # the gate moved from its initial values
