"""Retrieval: nearest train images to a few query images, and images for a free-text query.

$ python -m analysis --store STORE --out report --queries 4 --query "a cat" --query "a car"

Image queries are val rows (train rows when there is no val split; only from the classes
of ``--classes`` when it is given, spread over them) matched to all train rows by cosine on
``image_emb``. Text queries are embedded with the store's own caption encoder
and matched by cosine to the captions' ``text_emb``.
"""

from __future__ import annotations

import numpy as np
from sklearn.preprocessing import normalize

from analysis.data import balanced_sample
from analysis.text_encoder import load_text_encoder
from analysis.thumbs import Tile, tile_grid


def top_k_cosine(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices [Q, k], similarities [Q, k]) of the k most cosine-similar rows of ``base``."""
    sims = normalize(queries) @ normalize(base).T
    k = min(k, base.shape[0])
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sims, idx, axis=1)


def _label(names: list[str], y: int) -> str:
    return names[y] if 0 <= y < len(names) else "?"


def query_rows(labels: np.ndarray, n_queries: int, classes: np.ndarray | None) -> np.ndarray:
    """Sorted indices of the query rows: spread over the classes (one each before a second),
    drawn only from ``classes`` when given."""
    pool = np.arange(len(labels)) if classes is None else np.flatnonzero(np.isin(labels, classes))
    return pool[balanced_sample(labels[pool], n_queries)]


def add_image_retrieval(
    report, views, *, n_queries: int, k: int = 5, classes: np.ndarray | None = None
) -> list[int] | None:
    """Returns the query rows' labels (None when skipped). ``classes`` (``--classes``) limits
    the queries to those classes; their neighbours are searched among all train rows, so a
    confusion with another class still shows."""
    sec = report.section("Retrieval")
    train = views.train
    if train is None:
        sec.note("No train split to search; skipped.")
        return None
    source = views.val if views.val is not None and len(views.val) else train
    q = query_rows(source.labels, n_queries, classes)
    if len(q) == 0:
        sec.note(f"No {'val' if source is not train else 'train'} rows in the --classes chosen.")
        return None
    skip_self = source is train  # a train query would find itself first
    idx, sims = top_k_cosine(source.image_emb[q], train.image_emb, k + skip_self)
    names, rows = views.class_names, []
    for qi, nbrs, ss in zip(q, idx, sims, strict=True):
        qy = int(source.labels[qi])
        row = [Tile(source.paths[qi], f"QUERY [{_label(names, qy)}] {source.captions[qi]}", "blue")]
        pairs = [(j, s) for j, s in zip(nbrs, ss, strict=True) if not (skip_self and j == qi)]
        for j, s in pairs[:k]:
            y = int(train.labels[j])
            colour = "green" if y == qy else "red"
            row.append(
                Tile(train.paths[j], f"{s:.2f} [{_label(names, y)}] {train.captions[j]}", colour)
            )
        rows.append(row)
    fig, missing = tile_grid(rows, views.info.root)
    among = ""
    if classes is not None:
        shown = ", ".join(names[c] for c in classes[:8]) + (", ..." if len(classes) > 8 else "")
        among = f" from the --classes chosen ({shown}; neighbours from all classes)"
    sec.figure(
        "retrieval_images",
        fig,
        f"Each row: a {'val' if source is not train else 'train'} query (blue){among}, then "
        f"its {k} nearest train images by image-embedding cosine (green: same class, red: "
        "not).",
    )
    if missing:
        sec.note(f"{missing} thumbnails could not be opened from the store's path column.")
    return [int(y) for y in source.labels[q]]


def add_text_search(report, views, *, queries: list[str], k: int = 6) -> dict:
    """Returns {query: [captions, nearest first]} (empty when the search was skipped)."""
    sec = report.section("Free-text caption search")
    if not queries:
        sec.note("No --query given: pass --query 'some text' to search the captions.")
        return {}
    if views.train is None:
        sec.note("No train split to search; skipped.")
        return {}
    encoder, why = load_text_encoder(views.info.manifest)
    if encoder is None:
        sec.note(f"Free-text search skipped: {why}.")
        return {}
    emb = encoder.encode(queries)
    if emb.shape[1] != views.train.text_emb.shape[1]:
        sec.note(
            f"Free-text search skipped: {encoder.ref} gives {emb.shape[1]}-d vectors but the "
            f"store's text_emb are {views.train.text_emb.shape[1]}-d (a different model?)."
        )
        return {}
    pools = [s for s in (views.train, views.val) if s is not None]
    base = np.concatenate([s.text_emb for s in pools])
    paths = [p for s in pools for p in s.paths]
    caps = [c for s in pools for c in s.captions]
    labels = np.concatenate([s.labels for s in pools])
    idx, sims = top_k_cosine(emb, base, k)
    rows, table, hits = [], [], {}
    for query, nbrs, ss in zip(queries, idx, sims, strict=True):
        row = [Tile("", f"QUERY: {query}", "blue")]
        hits[query] = [caps[j] for j in nbrs]
        for rank, (j, s) in enumerate(zip(nbrs, ss, strict=True)):
            cls = _label(views.class_names, int(labels[j]))
            row.append(Tile(paths[j], f"{s:.2f} [{cls}] {caps[j]}"))
            table.append([query, rank + 1, f"{s:.3f}", cls, caps[j]])
        rows.append(row)
    sec.text(f"Encoder: {encoder.ref} ({encoder.pooling} pooling), searched {len(base)} captions.")
    sec.table(["query", "rank", "cosine", "class", "caption"], table)
    fig, _ = tile_grid(rows, views.info.root)
    sec.figure("text_search", fig, "Images whose captions are nearest to each text query")
    return hits
