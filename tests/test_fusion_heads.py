"""Contract tests over every registered head, the weighted-logits weightings, and heads
over K feature sets (priors, set dropout, old checkpoints' weights)."""

import inspect

import pytest
import torch
import torch.nn.functional as F

from fusion.heads import HEADS, HeadOptionError, WeightedLogitsHead, build_head

IMAGE_DIM, TEXT_DIM, CLASSES = 16, 12, 7
DIMS = {"image": IMAGE_DIM, "text": TEXT_DIM}


def DualLogitHead(*, image_dim, text_dim, **kw):  # noqa: N802 - the K=2 head, as before
    return WeightedLogitsHead(set_dims={"image": image_dim, "text": text_dim}, **kw)


def _batch(n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, IMAGE_DIM, generator=g),
        torch.randn(n, TEXT_DIM, generator=g),
        torch.randint(0, CLASSES, (n,), generator=g),
    )


def test_registry_has_the_issue_heads():
    assert {"visual_only", "text_only", "concat", "projection", "dual_logit"} <= set(HEADS)


def own(kind: str, **options):
    """The ``options`` head ``kind``'s constructor takes (build_head refuses the others)."""
    accepted = inspect.signature(HEADS[kind].__init__).parameters
    return {k: v for k, v in options.items() if k in accepted}


@pytest.mark.parametrize("kind", sorted(HEADS))
@pytest.mark.parametrize("option", ["linear_skip", "fusion_dim", "gate_hidden", "prior_sets"])
def test_an_option_the_head_does_not_take_is_refused_naming_the_heads_that_do(kind, option):
    takers = sorted(
        h for h, cls in HEADS.items() if option in inspect.signature(cls.__init__).parameters
    )
    value = {"linear_skip": True, "fusion_dim": 8, "gate_hidden": 4, "prior_sets": []}[option]
    if kind in takers:
        build_head(kind, set_dims=DIMS, num_classes=CLASSES, **{option: value})
        return
    with pytest.raises(HeadOptionError) as err:
        build_head(kind, set_dims=DIMS, num_classes=CLASSES, **{option: value})
    assert str(err.value) == (
        f"{option}: the head {kind} does not take this option (heads that do: "
        f"{', '.join(takers)}); leave it out (null over a config that sets it), or choose one "
        "of those heads"
    )
    # None is "not given": every head builds with it.
    build_head(kind, set_dims=DIMS, num_classes=CLASSES, **{option: None})


@pytest.mark.parametrize("kind", sorted(HEADS))
@pytest.mark.parametrize(
    "options", [{}, {"hidden_dims": [8, 6], "dropout": 0.1, "input_norm": False}]
)
def test_head_contract(kind, options):
    torch.manual_seed(0)
    head = build_head(
        kind, set_dims=DIMS, num_classes=CLASSES, **own(kind, fusion_dim=10, **options)
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
    visual = build_head("visual_only", set_dims=DIMS, num_classes=CLASSES)
    textual = build_head("text_only", set_dims=DIMS, num_classes=CLASSES)
    visual.eval(), textual.eval()
    assert torch.equal(visual(image, text), visual(image, torch.randn_like(text)))
    assert torch.equal(textual(image, text), textual(torch.randn_like(image), text))
    assert not torch.equal(visual(image, text), visual(torch.randn_like(image), text))


def test_unknown_head_names_the_registered_ones():
    with pytest.raises(ValueError, match="dual_logit"):
        build_head("nope", set_dims={"image": 4, "text": 4}, num_classes=2)


def test_dual_logit_is_the_weighted_sum_of_its_two_classifiers():
    head = DualLogitHead(image_dim=IMAGE_DIM, text_dim=TEXT_DIM, num_classes=CLASSES).eval()
    with torch.no_grad():
        head.weights.copy_(torch.tensor([0.3, 1.2]))
    image, text, _ = _batch()
    expected = 0.3 * head.branches[0](image) + 1.2 * head.branches[1](text)
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


SETS3 = {"a": 6, "b": 5, "zs": CLASSES}


def _sets_batch(n=11, seed=0, dims=SETS3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g) for d in dims.values()]


@pytest.mark.parametrize("kind", ["concat", "projection", "dual_logit", "gated"])
@pytest.mark.parametrize("priors", [[], ["zs"]])
def test_heads_over_three_sets_train_every_parameter(kind, priors):
    torch.manual_seed(0)
    options = own(kind, fusion_dim=8, prior_sets=priors)
    head = build_head(kind, set_dims=SETS3, num_classes=CLASSES, **options)
    xs = _sets_batch()
    logits = head(*xs)
    assert logits.shape == (11, CLASSES)
    loss = F.cross_entropy(logits, torch.arange(11) % CLASSES)
    for branch in head.branch_logits():
        loss = loss + F.cross_entropy(branch, torch.arange(11) % CLASSES)
    if head.aux_loss() is not None:
        loss = loss + head.aux_loss()
    loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{kind}: {name} gets no gradient"
    weights = head.fusion_weights()
    if weights is not None:
        assert len(weights) == len(head.weight_names())


def test_weighted_logits_over_k_sets_is_the_weighted_sum_and_a_prior_is_its_scores():
    head = build_head(
        "weighted_logits", set_dims=SETS3, num_classes=CLASSES, input_norm="none",
        prior_sets=["zs"],
    ).eval()
    assert head.kind == "dual_logit"  # one head, two names
    torch.testing.assert_close(head.fusion_weights().detach(), torch.full((3,), 1 / 3))
    with torch.no_grad():
        head.weights.copy_(torch.tensor([0.2, 0.5, 2.0]))
    a, b, zs = _sets_batch()
    expected = 0.2 * head.branches[0](a) + 0.5 * head.branches[1](b) + 2.0 * zs
    torch.testing.assert_close(head(a, b, zs), expected)
    # The penalty over K weights: lambda * (negative parts + |sum - 1|).
    with torch.no_grad():
        head.weights.copy_(torch.tensor([-0.5, 0.5, 2.0]))
    assert float(head.aux_loss().detach()) == pytest.approx(0.1 * (0.5 + abs(2.0 - 1)))


def test_a_prior_on_concat_starts_at_zero_and_adds_its_scores():
    head = build_head(
        "concat", set_dims=SETS3, num_classes=CLASSES, input_norm="none", hidden_dims=[],
        prior_sets=["zs"],
    ).eval()
    a, b, zs = _sets_batch()
    body = head.mlp(torch.cat([a, b], dim=1))
    torch.testing.assert_close(head(a, b, zs), body)  # weight 0: the plain head at first
    with torch.no_grad():
        head.prior_weights.fill_(1.5)
    torch.testing.assert_close(head(a, b, zs), body + 1.5 * zs)


def test_bad_sets_are_refused_with_what_to_change():
    with pytest.raises(ValueError, match="one score per class"):
        build_head("concat", set_dims=SETS3, num_classes=CLASSES, prior_sets=["a"])
    with pytest.raises(ValueError, match="not among the head's sets"):
        build_head("concat", set_dims=SETS3, num_classes=CLASSES, prior_sets=["x"])
    with pytest.raises(ValueError, match="reads the set 'image'"):
        build_head("visual_only", set_dims=SETS3, num_classes=CLASSES)
    with pytest.raises(ValueError, match="at most"):
        build_head("concat", set_dims=SETS3, num_classes=CLASSES, modality_dropout=0.4)


def test_gated_over_three_sets_gives_each_row_a_distribution():
    head = build_head("gated", set_dims={"a": 6, "b": 5, "c": 4}, num_classes=CLASSES).eval()
    xs = _sets_batch(dims={"a": 6, "b": 5, "c": 4})
    g = head.gate_values(*xs)
    assert g.shape == (11, 3)
    torch.testing.assert_close(g.sum(dim=1), torch.ones(11))
    assert head.weight_names() == ["a", "b", "c"]


def test_set_dropout_drops_at_most_one_set_per_row_each_at_its_rate():
    torch.manual_seed(0)
    head = build_head("concat", set_dims={"a": 3, "b": 3, "c": 3}, num_classes=2,
                      input_norm="none", modality_dropout=0.2)
    xs = [torch.ones(20000, 3) for _ in range(3)]
    head.train()
    out = head.normalised(*xs)
    dropped = torch.stack([(x == 0).all(dim=1) for x in out], dim=1)
    assert int(dropped.sum(dim=1).max()) == 1
    rates = dropped.float().mean(dim=0)
    torch.testing.assert_close(rates, torch.full((3,), 0.2), atol=0.015, rtol=0)
    head.eval()
    assert all(torch.equal(x, y) for x, y in zip(head.normalised(*xs), xs, strict=True))


@pytest.mark.parametrize("kind", ["visual_only", "concat", "projection", "dual_logit", "gated"])
def test_weights_saved_by_the_two_input_heads_load_into_the_k_set_heads(kind):
    """Checkpoints written before --data.features named their parameters image_norm,
    text_mlp...: they load unchanged and give the same logits."""
    torch.manual_seed(0)
    head = build_head(kind, set_dims=DIMS, num_classes=CLASSES, **own(kind, fusion_dim=10)).eval()
    renames = {"norms.0.": "image_norm.", "norms.1.": "text_norm.", "branches.0.": "image_mlp.",
               "branches.1.": "text_mlp.", "projs.0.": "image_proj.", "projs.1.": "text_proj."}
    old = {}
    for k, v in head.state_dict().items():
        for new, was in renames.items():
            if k.startswith(new):
                k = was + k[len(new):]
                break
        old[k] = v.clone() + 0.01
    fresh = build_head(kind, set_dims=DIMS, num_classes=CLASSES, **own(kind, fusion_dim=10)).eval()
    fresh.load_state_dict(old)
    image, text, _ = _batch()
    for name, v in fresh.state_dict().items():
        assert torch.equal(v, head.state_dict()[name] + 0.01), name
    assert fresh(image, text).shape == (9, CLASSES)
