"""Caption statistics: lengths, most frequent captions, degenerate ones, class-name mentions.

$ python -m analysis --store STORE --out report

*Empty* and *degenerate* are data_prep.caption_quality's definitions, the ones the store's
manifest counts with (a word repeated, a word over half of the caption, a sub-word or
character loop such as "uxbuxbuxb", no letters at all). A caption *mentions* its class when
it contains every distinctive word of the class name (underscores and hyphens read as
spaces, case ignored, a plural ``s``/``es`` allowed): the words of the name that at most
half of the class names share, so ``four`` for ``digit_four`` among ``digit_zero`` ..
``digit_nine`` ("a four" mentions it), both words of ``golden_retriever``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from data_prep.caption_quality import caption_quality, is_degenerate, words  # noqa: F401

WNID = re.compile(r"^n\d{8}$")


def name_words(class_name: str) -> list[str]:
    return words(class_name.replace("_", " ").replace("-", " "))


def shared_words(class_names: Sequence[str]) -> set[str]:
    """Words in more than half of the class names (``digit`` in ``digit_zero`` ...): they
    tell no class from another, so a caption need not say them."""
    if len(class_names) < 2:
        return set()
    df = Counter(w for n in class_names for w in set(name_words(n)))
    return {w for w, n in df.items() if n > len(class_names) / 2}


def class_keywords(class_names: Sequence[str]) -> list[list[str]]:
    """Per class, the words a caption must contain to mention it: its distinctive words,
    or all of its words when every one is shared."""
    shared = shared_words(class_names)
    out = []
    for n in class_names:
        ws = name_words(n)
        out.append([w for w in ws if w not in shared] or ws)
    return out


def mentions_class(caption: str, keywords: Sequence[str] | str) -> bool:
    """Every keyword is a word of the caption, or its plural (``s``/``es``). A string is
    a class name read on its own: all its words are keywords."""
    keys = name_words(keywords) if isinstance(keywords, str) else list(keywords)
    have = set(words(caption))
    return bool(keys) and all(k in have or k + "s" in have or k + "es" in have for k in keys)


def caption_stats(captions: list[str], labels: np.ndarray, class_names: list[str]) -> dict:
    """Counts and rates the section shows (also what the tests check)."""
    lengths = np.array([len(words(c)) for c in captions])
    quality = Counter(caption_quality(c) for c in captions)
    keys = class_keywords(class_names)
    named = [mentions_class(c, keys[y]) for c, y in zip(captions, labels, strict=True) if y >= 0]
    return {
        "n": len(captions),
        "lengths": lengths,
        "degenerate": quality["degenerate"],
        "empty": quality["empty"],
        "mentions": int(np.sum(named)),
        "mention_rate": float(np.mean(named)) if named else float("nan"),
        "shared_words": sorted(shared_words(class_names)),
        "top": Counter(c.strip() for c in captions).most_common(15),
    }


def manifest_mismatch(views, st: dict) -> str:
    """A note when the manifest counted empty/degenerate captions differently: a store
    written by an older data_prep, whose definition has changed since."""
    splits = views.info.manifest.get("splits") or {}
    got = [splits.get(n) or {} for n in (views.train_name, views.val_name) if n]
    if not got or any("captions_degenerate" not in m for m in got):
        return ""
    rows = sum(m.get("rows", -1) for m in got)
    if rows != st["n"]:  # unlabelled rows were dropped: the counts cover other rows
        return ""
    said = {k: sum(m.get(f"captions_{k}", 0) for m in got) for k in ("empty", "degenerate")}
    if said == {k: st[k] for k in said}:
        return ""
    return (
        f"manifest.json counts {said['empty']} empty and {said['degenerate']} degenerate "
        f"captions in these splits, this report {st['empty']} and {st['degenerate']} with "
        "data_prep.caption_quality: the store was built by an older data_prep; rebuild it "
        "to update the manifest."
    )


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
        ["captions", "empty", "degenerate", "mention their class", "share", "median words"],
        [[st["n"], st["empty"], st["degenerate"], st["mentions"], st["mention_rate"],
          np.median(st["lengths"])]],
        "train and val captions",
    )  # fmt: skip
    stale = manifest_mismatch(views, st)
    if stale:
        sec.note(stale)
    if st["shared_words"]:
        shared = set(st["shared_words"])
        example = next(i for i, n in enumerate(views.class_names) if shared & set(name_words(n)))
        keys = " ".join(class_keywords(views.class_names)[example])
        sec.note(
            f"Words most class names share ({', '.join(st['shared_words'][:10])}) are not "
            f"required: a caption mentions {views.class_names[example]} when it says '{keys}'."
        )
    if st["mention_rate"] == 0 and all(WNID.match(n) for n in views.class_names[:20]):
        sec.note(
            "Class names look like WordNet ids (n01234567), which captions never contain: "
            "the mention rate says nothing here. Give readable names with --display_names "
            "FILE (a class,name CSV)."
        )
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist(st["lengths"], bins=np.arange(st["lengths"].max() + 2) - 0.5, color="#4a7ab5")
    ax.set_xlabel("words per caption")
    ax.set_ylabel("captions")
    sec.figure("caption_lengths", fig, "Caption length histogram (words)")
    sec.table(["caption", "count"], [[c or "(empty)", n] for c, n in st["top"]], "most frequent")
    return st
