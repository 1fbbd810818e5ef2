"""The report's numbers against independent computations on the same arrays."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score
from sklearn.preprocessing import StandardScaler

from analysis.captions import caption_stats, is_degenerate, mentions_class
from analysis.clustering import add_clustering, cluster_modality, k_distance, purity
from analysis.data import balanced_sample, class_subset, load_views
from analysis.html import Report
from analysis.probes import add_probes, knn_accuracy, probe_sweep
from analysis.run_report import confusion_pairs, per_class_accuracy, read_metrics, series
from feature_store.synthetic import make_synthetic_store
from tests.fixtures_analysis import write_metrics

CS = (0.001, 0.01, 0.1, 1.0)


@pytest.fixture(scope="module")
def noisy_store(tmp_path_factory):
    # Noise high enough that probes are neither perfect nor at chance: accuracies can differ.
    root = tmp_path_factory.mktemp("noisy") / "store"
    make_synthetic_store(
        root, num_classes=6, per_class={"train": 30, "val": 20}, noise=4.0, image_dim=16
    )
    return root


def _sk_top1(x_tr, y_tr, x_va, y_va, c):
    scaler = StandardScaler().fit(x_tr)
    clf = LogisticRegression(C=c, max_iter=1000).fit(scaler.transform(x_tr), y_tr)
    return float((clf.predict(scaler.transform(x_va)) == y_va).mean())


def test_probe_table_matches_sklearn_run_directly(noisy_store):
    views = load_views(noisy_store)
    got = add_probes(Report("t"), views, train_cap=None, val_cap=None, cs=CS, max_iter=1000)
    tr, va = views.train, views.val
    for name, x_tr, x_va in [
        ("image", tr.image_emb, va.image_emb),
        ("text", tr.text_emb, va.text_emb),
        ("concat", np.hstack([tr.image_emb, tr.text_emb]), np.hstack([va.image_emb, va.text_emb])),
    ]:
        sweep = {c: _sk_top1(x_tr, tr.labels, x_va, va.labels, c) for c in CS}
        assert got[name]["val_acc"] == pytest.approx(max(sweep.values()), abs=1e-9)
        assert sweep[got[name]["C"]] == pytest.approx(got[name]["val_acc"], abs=1e-9)
        scaler = StandardScaler().fit(x_tr)
        lda = LinearDiscriminantAnalysis().fit(scaler.transform(x_tr), tr.labels)
        l_tr, l_va = lda.transform(scaler.transform(x_tr)), lda.transform(scaler.transform(x_va))
        assert l_tr.shape[1] == 5  # classes - 1 axes
        expect = _sk_top1(l_tr, tr.labels, l_va, va.labels, got[name]["lda_C"])
        assert got[name]["lda_val_acc"] == pytest.approx(expect, abs=1e-9)
    accs = [got[n]["val_acc"] for n in got]
    assert 1 / 6 < min(accs) and max(accs) <= 1.0


def test_probe_pca_cap_matches_sklearn_pipeline(noisy_store):
    from sklearn.decomposition import PCA

    views = load_views(noisy_store)
    tr, va = views.train, views.val
    res = probe_sweep(tr.image_emb, tr.labels, va.image_emb, va.labels, cs=CS, max_dim=4)
    scaler = StandardScaler().fit(tr.image_emb)
    pca = PCA(n_components=4, random_state=0).fit(scaler.transform(tr.image_emb))
    z_tr = pca.transform(scaler.transform(tr.image_emb))
    z_va = pca.transform(scaler.transform(va.image_emb))
    sweep = {
        c: (LogisticRegression(C=c, max_iter=1000).fit(z_tr, tr.labels).predict(z_va) == va.labels)
        for c in CS
    }
    assert res.sweep == pytest.approx({c: float(v.mean()) for c, v in sweep.items()}, abs=1e-9)


def test_probe_prefers_informative_modality(tmp_path):
    make_synthetic_store(tmp_path / "s", num_classes=4, signal="image", noise=1.0)
    views = load_views(tmp_path / "s")
    got = add_probes(Report("t"), views, train_cap=None, val_cap=None, cs=(0.1, 1.0))
    assert got["image"]["val_acc"] > 0.9
    assert got["text"]["val_acc"] < 0.6
    assert got["image"]["knn_val_acc"] > 0.9


def test_knn_matches_numpy_vote(noisy_store):
    views = load_views(noisy_store)
    tr, va = views.train, views.val
    k = 7
    a = tr.image_emb / np.linalg.norm(tr.image_emb, axis=1, keepdims=True)
    b = va.image_emb / np.linalg.norm(va.image_emb, axis=1, keepdims=True)
    nbrs = np.argsort(-(b @ a.T), axis=1)[:, :k]
    votes = np.array([np.bincount(tr.labels[n], minlength=6).argmax() for n in nbrs])
    expect = float((votes == va.labels).mean())
    assert knn_accuracy(tr.image_emb, tr.labels, va.image_emb, va.labels, k=k) == expect


def test_probe_sweep_picks_best_c():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((80, 5))
    y = (x[:, 0] + 0.8 * rng.standard_normal(80) > 0).astype(int)
    res = probe_sweep(x[:50], y[:50], x[50:], y[50:], cs=(1e-4, 1.0))
    assert set(res.sweep) == {1e-4, 1.0}
    assert res.val_acc == max(res.sweep.values())
    assert res.sweep[res.best_c] == res.val_acc


def test_purity_by_hand():
    labels = np.array([0, 0, 1, 1, 1, 2])
    clusters = np.array([0, 0, 0, 1, 1, 1])
    assert purity(labels, clusters) == pytest.approx(4 / 6)
    assert purity(labels, labels) == 1.0


def test_clustering_recovers_known_clusters(tmp_path):
    make_synthetic_store(tmp_path / "s", num_classes=5, noise=0.3, image_dim=16, text_dim=12)
    views = load_views(tmp_path / "s")
    report = Report("t")
    got = add_clustering(report, views, cap=None)
    for modality in ("image", "text"):
        km, db = got[modality]["kmeans"], got[modality]["dbscan"]
        assert km["clusters"] == 5
        assert km["purity"] == pytest.approx(1.0)
        assert km["nmi"] == pytest.approx(1.0)
        # One density for all classes: a class that is more spread after L2-normalising
        # may fall to noise, but what DBSCAN does cluster must be pure.
        assert db["clusters"] >= 4 and db["purity"] == pytest.approx(1.0)
        assert db["noise"] < 0.25 * len(views.train)
    assert [f.name for f in report.figures] == ["k_distance"]


def test_dbscan_finds_blobs_and_flags_outliers():
    rng = np.random.default_rng(0)
    dirs = np.eye(16)[:4]
    labels = np.repeat(np.arange(4), 50)
    x = dirs[labels] + 0.03 * rng.standard_normal((200, 16))
    outliers = rng.standard_normal((8, 16))
    res, _ = cluster_modality(np.vstack([x, outliers]), np.r_[labels, np.arange(8) % 4])
    db = res["dbscan"]
    assert db["clusters"] == 4 and 8 <= db["noise"] <= 15
    # the outliers carry arbitrary labels: purity stays 1 only if they were all called noise
    assert db["purity"] == pytest.approx(1.0)


def test_clustering_scores_match_sklearn_on_mixed_clusters(noisy_store):
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import normalize

    from analysis.clustering import seeds

    views = load_views(noisy_store)
    got = add_clustering(Report("t"), views, cap=None)
    x = normalize(views.train.image_emb)
    km = KMeans(n_clusters=6, init=seeds(x, 6), n_init=1, max_iter=100).fit_predict(x)
    y = views.train.labels
    assert got["image"]["kmeans"]["nmi"] == pytest.approx(normalized_mutual_info_score(y, km))
    # purity from the cluster-by-class counts, computed without contingency_matrix
    maj = sum(np.bincount(y[km == c]).max() for c in np.unique(km))
    assert got["image"]["kmeans"]["purity"] == pytest.approx(maj / len(y))
    assert got["image"]["kmeans"]["purity"] < 1.0  # noisy: the test can tell a bad formula


def test_k_distance_knee_between_scales():
    # Two tight blobs far apart plus a few far-off outliers: the knee separates them.
    rng = np.random.default_rng(0)
    blobs = np.vstack([rng.normal(0, 0.01, (100, 2)), rng.normal(5, 0.01, (100, 2))])
    outliers = rng.uniform(20, 40, (6, 2))
    kd = k_distance(np.vstack([blobs, outliers]), min_samples=5)
    assert np.all(np.diff(kd.curve) >= 0)
    assert 0.005 < kd.eps < 5.0 and kd.note == ""


def test_balanced_sample_caps_and_spreads():
    labels = np.array([0] * 100 + [1] * 10 + [2] * 5)
    idx = balanced_sample(labels, 30, seed=0)
    assert len(idx) == 30 and len(set(idx)) == 30 and np.all(np.diff(idx) > 0)
    counts = np.bincount(labels[idx], minlength=3)
    assert counts[1] == 10 and counts[2] == 5  # rare classes kept whole
    assert np.array_equal(balanced_sample(labels, None), np.arange(115))


def test_class_subset_count_and_names():
    labels = np.array([2, 2, 2, 0, 1, 1])
    names = ["a", "b", "c"]
    assert class_subset(labels, names, "2").tolist() == [1, 2]
    assert class_subset(labels, names, "c, a").tolist() == [0, 2]
    with pytest.raises(ValueError, match="zebra"):
        class_subset(labels, names, "zebra")


def test_caption_stats():
    caps = ["a sketch of a golden_retriever", "", "dog dog dog dog sketch", "a drawing of a cat",
            "a sketch of uxbuxbuxbuxb"]  # fmt: skip
    names = ["golden_retriever", "cat"]
    labels = np.array([0, 1, 0, 1, 1])
    st = caption_stats(caps, labels, names)
    # The manifest's definitions (data_prep.caption_quality): "" is empty, not degenerate;
    # a word loop and a sub-word loop are degenerate.
    assert st["empty"] == 1 and st["degenerate"] == 2
    assert st["mention_rate"] == pytest.approx(2 / 5)
    assert st["lengths"].tolist() == [6, 0, 5, 5, 4]  # "golden_retriever" is two words
    assert mentions_class("A Golden Retriever running", "golden_retriever")
    assert not mentions_class("a catalogue", "cat")
    assert not is_degenerate("two words")


def test_run_numbers_from_sparse_metrics(tmp_path):
    write_metrics(tmp_path, steps=12)
    rows = read_metrics(tmp_path / "metrics.csv")
    steps, acc = series(rows, "val/acc_top1")
    assert steps.tolist() == [3, 7, 11] and acc.tolist() == pytest.approx([0.15, 0.35, 0.55])
    steps, alpha = series(rows, "fusion/alpha")
    assert len(alpha) == 12 and alpha[-1] == pytest.approx(0.5 + 11 / 40)
    assert series(rows, "fusion/gamma") is None


def test_confusions_and_per_class_accuracy():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    preds = np.array([0, 1, 1, 0, 1, 2, 2, 0])
    assert confusion_pairs(labels, preds, 2) == [(0, 1, 2), (1, 0, 1)]
    acc = per_class_accuracy(labels, preds, 4)
    assert acc[:3].tolist() == pytest.approx([1 / 3, 1 / 2, 2 / 3])
    assert np.isnan(acc[3])
