"""Caption statistics: lengths, most frequent captions, degenerate ones, class-name mentions.

$ python -m analysis --store STORE --out report

*Empty* and *degenerate* are data_prep.caption_quality's definitions, the ones the store's
manifest counts with (a word repeated, a word over half of the caption, a sub-word or
character loop such as "uxbuxbuxb", no letters at all). A class name counts as *mentioned* when its words (underscores and
hyphens read as spaces, case ignored) appear as a phrase in the caption.
"""

from __future__ import annotations

import re
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np

from data_prep.caption_quality import caption_quality, is_degenerate, words  # noqa: F401

WNID = re.compile(r"^n\d{8}$")


def mentions_class(caption: str, class_name: str) -> bool:
    phrase = " ".join(words(class_name.replace("_", " ").replace("-", " ")))
    return bool(phrase) and f" {phrase} " in f" {' '.join(words(caption))} "


def caption_stats(captions: list[str], labels: np.ndarray, class_names: list[str]) -> dict:
    """Counts and rates the section shows (also what the tests check)."""
    lengths = np.array([len(words(c)) for c in captions])
    quality = Counter(caption_quality(c) for c in captions)
    named = [
        mentions_class(c, class_names[y]) for c, y in zip(captions, labels, strict=True) if y >= 0
    ]
    return {
        "n": len(captions),
        "lengths": lengths,
        "degenerate": quality["degenerate"],
        "empty": quality["empty"],
        "mention_rate": float(np.mean(named)) if named else float("nan"),
        "top": Counter(c.strip() for c in captions).most_common(15),
    }


def add_captions(report, views) -> dict:
    sec = report.section("Captions")
    splits = [s for s in (views.train, views.val) if s is not None]
    if not splits:
        sec.note("No labelled split: no caption statistics.")
        return {}
    captions = [c for s in splits for c in s.captions]
    labels = np.concatenate([s.labels for s in splits])
    st = caption_stats(captions, labels, views.class_names)
    sec.table(
        ["captions", "empty", "degenerate", "mention their class", "median words"],
        [[st["n"], st["empty"], st["degenerate"], st["mention_rate"], np.median(st["lengths"])]],
        "train and val captions",
    )
    if st["mention_rate"] == 0 and all(WNID.match(n) for n in views.class_names[:20]):
        sec.note(
            "Class names look like WordNet ids (n01234567), which captions never contain: "
            "the mention rate says nothing here. A class map with readable names would."
        )
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist(st["lengths"], bins=np.arange(st["lengths"].max() + 2) - 0.5, color="#4a7ab5")
    ax.set_xlabel("words per caption")
    ax.set_ylabel("captions")
    sec.figure("caption_lengths", fig, "Caption length histogram (words)")
    sec.table(["caption", "count"], [[c or "(empty)", n] for c, n in st["top"]], "most frequent")
    return st
