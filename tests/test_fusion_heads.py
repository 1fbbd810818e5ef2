"""Contract tests over every registered head, and the dual-logit weightings."""

import pytest
import torch
import torch.nn.functional as F

from fusion.heads import HEADS, DualLogitHead, build_head

IMAGE_DIM, TEXT_DIM, CLASSES = 16, 12, 7


def _batch(n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, IMAGE_DIM, generator=g),
        torch.randn(n, TEXT_DIM, generator=g),
        torch.randint(0, CLASSES, (n,), generator=g),
    )


def test_registry_has_the_issue_heads():
    assert {"visual_only", "text_only", "concat", "projection", "dual_logit"} <= set(HEADS)


@pytest.mark.parametrize("kind", sorted(HEADS))
@pytest.mark.parametrize(
    "options", [{}, {"hidden_dims": [8, 6], "dropout": 0.1, "input_norm": False}]
)
def test_head_contract(kind, options):
    torch.manual_seed(0)
    head = build_head(
        kind, image_dim=IMAGE_DIM, text_dim=TEXT_DIM, num_classes=CLASSES, fusion_dim=10, **options
    )
    assert head.kind == kind
    image, text, labels = _batch()
    logits = head(image, text)
    assert logits.shape == (9, CLASSES)
    assert torch.isfinite(logits).all()
    loss = F.cross_entropy(logits, labels)
    if head.aux_loss() is not None:
        loss = loss + head.aux_loss()
    loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{kind}: {name} gets no gradient"


def test_single_modality_heads_ignore_the_other_input():
    image, text, _ = _batch()
    visual = build_head("visual_only", image_dim=IMAGE_DIM, text_dim=TEXT_DIM, num_classes=CLASSES)
    textual = build_head("text_only", image_dim=IMAGE_DIM, text_dim=TEXT_DIM, num_classes=CLASSES)
    visual.eval(), textual.eval()
    assert torch.equal(visual(image, text), visual(image, torch.randn_like(text)))
    assert torch.equal(textual(image, text), textual(torch.randn_like(image), text))
    assert not torch.equal(visual(image, text), visual(torch.randn_like(image), text))


def test_unknown_head_names_the_registered_ones():
    with pytest.raises(ValueError, match="dual_logit"):
        build_head("nope", image_dim=4, text_dim=4, num_classes=2)


def test_dual_logit_is_the_weighted_sum_of_its_two_classifiers():
    head = DualLogitHead(image_dim=IMAGE_DIM, text_dim=TEXT_DIM, num_classes=CLASSES).eval()
    with torch.no_grad():
        head.weights.copy_(torch.tensor([0.3, 1.2]))
    image, text, _ = _batch()
    expected = 0.3 * head.image_mlp(image) + 1.2 * head.text_mlp(text)
    torch.testing.assert_close(head(image, text), expected)


def test_penalty_value_matches_the_report_formula():
    head = DualLogitHead(image_dim=4, text_dim=4, num_classes=3, penalty_lambda=0.3)
    torch.testing.assert_close(head.fusion_weights().detach(), torch.tensor([0.5, 0.5]))
    assert float(head.aux_loss().detach()) == pytest.approx(0.0)
    with torch.no_grad():
        head.weights.copy_(torch.tensor([-0.25, 1.5]))
    # lambda * (neg parts + |alpha + beta - 1|) = 0.3 * (0.25 + 0.25)
    assert float(head.aux_loss().detach()) == pytest.approx(0.3 * (0.25 + abs(-0.25 + 1.5 - 1)))


def _train_weights(weighting, penalty_lambda, start, steps=150):
    torch.manual_seed(0)
    head = DualLogitHead(
        image_dim=IMAGE_DIM,
        text_dim=TEXT_DIM,
        num_classes=CLASSES,
        hidden_dims=[16],
        weighting=weighting,
        penalty_lambda=penalty_lambda,
    )
    with torch.no_grad():
        head.weights.copy_(torch.tensor(start))
    opt = torch.optim.SGD(head.parameters(), lr=0.05)
    image, text, labels = _batch(n=64, seed=1)
    sums = []
    for _ in range(steps):
        loss = F.cross_entropy(head(image, text), labels)
        if head.aux_loss() is not None:
            loss = loss + head.aux_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        alpha, beta = head.fusion_weights().detach()
        sums.append(float(alpha + beta))
        if weighting == "softmax":
            assert alpha > 0 and beta > 0
            assert float(alpha + beta) == pytest.approx(1.0, abs=1e-6)
    return head, sums


def test_softmax_weighting_stays_positive_and_on_the_simplex():
    # Start far from (0.5, 0.5) in logit space; every step checks alpha, beta > 0, sum 1.
    head, sums = _train_weights("softmax", 0.0, [3.0, -3.0])
    assert head.aux_loss() is None
    assert all(s == pytest.approx(1.0, abs=1e-6) for s in sums)


def test_penalty_weighting_pulls_alpha_plus_beta_toward_one():
    _, with_penalty = _train_weights("penalty", 1.0, [1.5, 1.0])
    _, without = _train_weights("penalty", 0.0, [1.5, 1.0])
    assert abs(with_penalty[-1] - 1) < 0.5 * abs(2.5 - 1)
    assert abs(with_penalty[-1] - 1) < abs(without[-1] - 1)
