"""On synthetic stores with a known structure, heads learn what the structure says."""

import pytest

from tests.fixtures_training import fit_module, small_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    per_class = {"train": 40, "val": 15, "test": 2}
    return {
        signal: small_store(
            root / signal,
            signal=signal,
            num_classes=4 if signal == "joint" else 5,
            per_class=per_class,
            noise=0.7,
        )
        for signal in ("text", "image", "joint")
    }


@pytest.mark.parametrize("signal", ["text", "image"])
def test_dual_logit_weights_the_modality_that_carries_the_label(stores, signal):
    model, metrics = fit_module(
        stores[signal], "dual_logit", epochs=30, head_options={"penalty_lambda": 0.1}
    )
    alpha, beta = model.head.fusion_weights().tolist()
    if signal == "text":
        assert beta > alpha, (alpha, beta)
    else:
        assert alpha > beta, (alpha, beta)
    assert metrics["val/acc_top1"] > 0.9
    # The history logged every step starts at the report's 0.5 / 0.5.
    assert model.alpha_beta_history[0][1:] == [0.5, 0.5]
    assert len(model.alpha_beta_history) == model.global_step


def test_concat_beats_both_single_modality_heads_when_only_both_decide(stores):
    accs = {
        head: fit_module(stores["joint"], head, epochs=30)[1]["val/acc_top1"]
        for head in ("visual_only", "text_only", "concat")
    }
    # Each modality knows one bit of a two-bit label: alone at most ~50%.
    assert accs["concat"] > 0.9, accs
    assert accs["concat"] > max(accs["visual_only"], accs["text_only"]) + 0.25, accs
