"""Caption statistics: lengths, most frequent captions, degenerate ones, class-name mentions.

$ python -m analysis --store STORE --out report

A caption is *degenerate* when it is empty, has fewer than two distinct words, or one word
makes up more than half of a caption of four or more words (a generation loop such as
"a a a a sketch"). A class name counts as *mentioned* when its words (underscores and
hyphens read as spaces, case ignored) appear as a phrase in the caption.
"""

from __future__ import annotations

import re
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np

WORD = re.compile(r"[a-z0-9']+")
WNID = re.compile(r"^n\d{8}$")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def is_degenerate(caption: str) -> bool:
    w = words(caption)
    if len(set(w)) < 2:
        return True
    return len(w) >= 4 and Counter(w).most_common(1)[0][1] > len(w) / 2


def mentions_class(caption: str, class_name: str) -> bool:
    phrase = " ".join(words(class_name.replace("_", " ").replace("-", " ")))
    return bool(phrase) and f" {phrase} " in f" {' '.join(words(caption))} "


def caption_stats(captions: list[str], labels: np.ndarray, class_names: list[str]) -> dict:
    """Counts and rates the section shows (also what the tests check)."""
    lengths = np.array([len(words(c)) for c in captions])
    named = [
        mentions_class(c, class_names[y]) for c, y in zip(captions, labels, strict=True) if y >= 0
    ]
    return {
        "n": len(captions),
        "lengths": lengths,
        "degenerate": sum(is_degenerate(c) for c in captions),
        "empty": sum(not c.strip() for c in captions),
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
