"""Readable class names for class-name prompts, and ImageNet synset indices.

$ python -c "from data_prep.class_names import readable_names; print(readable_names(['n01440764']))"

The store's classes are its folder names. Prompts need words: a ``folder,name`` CSV
(``--input.class_names``) when given, else the first WordNet lemma timm ships for ImageNet
synset folders (``timm.data.ImageNetInfo``: n01440764 -> "tench"), else the folder name
with ``_`` as spaces. Nothing here is a hard-coded class list.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from feature_store.cli import read_option_file

SYNSET = re.compile(r"n\d{8}")


def is_synset_list(folders: list[str]) -> bool:
    """True when every class folder is a WordNet synset id (ImageNet's ``n01440764``)."""
    return bool(folders) and all(SYNSET.fullmatch(f) for f in folders)


def readable_names(folders: list[str], csv_path: str | None = None) -> tuple[list[str], str]:
    """(a readable name per class, in the store's order; where the names came from)."""
    if csv_path:
        mapping = _read_csv(csv_path)
        missing = [f for f in folders if f not in mapping]
        if missing:
            raise ValueError(
                f"--input.class_names {csv_path} has no name for {len(missing)} of the store's "
                f"{len(folders)} classes (e.g. {missing[:3]}); add a row folder,name for each"
            )
        return [mapping[f] for f in folders], f"csv:{Path(csv_path).resolve()}"
    if is_synset_list(folders):
        from timm.data import ImageNetInfo

        info = ImageNetInfo()  # the lemma table covers every ImageNet-21k synset
        try:
            # "tench, Tinca tinca": the first lemma is the everyday word.
            return [info.label_name_to_description(f).split(",")[0].strip() for f in folders], (
                "wordnet lemmas (timm.data.ImageNetInfo)"
            )
        except KeyError as err:
            raise ValueError(
                f"class folder {err.args[0]} is not a WordNet synset timm knows; give readable "
                "names with --input.class_names FILE.csv (folder,name)"
            ) from None
    return [f.replace("_", " ") for f in folders], "folder names"


def _read_csv(path: str) -> dict[str, str]:
    """``folder,name`` rows (a header row naming those columns is optional)."""
    text = read_option_file(path, "--input.class_names", "a CSV file of folder,name rows")
    with io.StringIO(text, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["folder", "name"]:
        rows = rows[1:]
    bad = [r for r in rows if len(r) < 2 or not r[1].strip()]
    if bad:
        raise ValueError(f"--input.class_names {path}: row {bad[0]} is not folder,name")
    return {r[0].strip(): r[1].strip() for r in rows}


def synset_indices(folders: list[str], subset: str = "imagenet-1k") -> list[int]:
    """Each class folder's index among ``subset``'s classes (timm's ImageNetInfo order,
    the order ImageNet classifiers' logits come in); ValueError naming one that is not."""
    from timm.data import ImageNetInfo

    order = {s: i for i, s in enumerate(ImageNetInfo(subset).label_names())}
    missing = [f for f in folders if f not in order]
    if missing:
        raise ValueError(
            f"imagenet_logits needs class folders that are {subset} synsets; {len(missing)} are "
            f"not (e.g. {missing[:3]}). Drop this set, or use a classifier of another subset"
        )
    return [order[f] for f in folders]
