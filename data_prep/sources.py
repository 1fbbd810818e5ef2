"""List the images of a dataset (Kaggle folders or a Hugging Face dataset) before any model loads.

    >>> from data_prep.sources import scan_kaggle, hf_listing
    >>> listing = scan_kaggle("data/sketches")            # train_images/, val_images/, test_images/
    >>> listing.class_names[:3], len(listing.splits["train"])
    >>> image = listing.open_image(listing.splits["train"][0])   # RGB PIL image, or BadImageError
    >>> listing = hf_listing(dataset="imagefolder", data_dir="data/hf", splits={"train": "train"})

A :class:`Listing` holds ids, labels and paths only (no pixels), so it is cheap to pickle
to DataLoader workers and DDP ranks. Every problem with the layout raises
:class:`InputLayoutError` naming the folder or file and the fix, so a bad path fails in
seconds instead of after the models have loaded.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from data_prep.config import PrepConfig
from data_prep.images import IMAGE_EXTENSIONS, BadImageError, is_image_file, load_image
from feature_store.cli import OptionFileError, read_option_file

DEFAULT_SPLIT_DIRS = {"train": "train_images", "val": "val_images", "test": "test_images"}
UNLABELLED_SPLIT = "test"  # the one split whose folder names carry no class
CLASS_MAP_NAME_COLUMNS = ("class_name", "class", "name", "folder")
CLASS_MAP_LABEL_COLUMNS = ("label", "category", "index")
_EXAMPLES = 5  # how many offending names an error message lists


class InputLayoutError(ValueError):
    """The input folders or dataset do not have the expected layout; the message says how."""


@dataclass(frozen=True)
class Item:
    """One input image: ``id`` is unique within its split, ``label`` is -1 when unknown."""

    id: str
    label: int
    path: str
    split: str


@dataclass
class HFImageSource:
    """Where the image bytes of Hugging Face rows live: one dataset per split, not decoded."""

    datasets: dict[str, Any]  # our split name -> datasets.Dataset with only the image column
    image_column: str


@dataclass
class Listing:
    """Class names in label order, the items of each split sorted by id, and unused files."""

    class_names: list[str]
    splits: dict[str, list[Item]]
    unused_files: list[str] = field(default_factory=list)
    source: str = ""  # "folders:<root>" or "hf:<dataset>", for the manifest
    hf: HFImageSource | None = field(default=None, repr=False)

    def open_image(self, item: Item) -> Image.Image:
        """Decode ``item`` to RGB through :func:`data_prep.images.load_image`."""
        if self.hf is None:
            return load_image(item.path)
        row = int(item.path.rsplit("/", 1)[1])
        cell = self.hf.datasets[item.split][row][self.hf.image_column]
        if not cell or not (cell.get("bytes") or cell.get("path")):
            raise BadImageError("missing image: empty image cell", source=item.path)
        if cell.get("bytes"):
            return load_image(cell["bytes"], name=item.path)
        return load_image(cell["path"])


# ---------------------------------------------------------------------------------------
# Kaggle folders
# ---------------------------------------------------------------------------------------


def scan_kaggle(
    root: str | os.PathLike,
    *,
    split_dirs: dict[str, str] | None = None,
    class_map: str | os.PathLike | None = None,
) -> Listing:
    """List ``root/<split dir>/<class>/*`` (see docs/architecture.md, "Inputs").

    Labels are the index of the class folder in the sorted train class folders (the order
    of ``torchvision.datasets.ImageFolder``), or come from ``class_map``: a CSV with a
    header ``class_name,label`` (``class``/``name``/``folder`` and ``category``/``index``
    are accepted too) and labels 0..K-1, each once. The ``test`` split is unlabelled: its
    images sit in one folder of any name (``mistery_category``) and get label -1.
    Files and folders whose names start with "." are ignored; files with other extensions
    are returned in ``unused_files``.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise InputLayoutError(
            f"input folder {root} does not exist (or is not a folder): point the config's data root at the folder "
            f"holding {', '.join(sorted((split_dirs or DEFAULT_SPLIT_DIRS).values()))}."
        )
    split_dirs = dict(DEFAULT_SPLIT_DIRS if split_dirs is None else split_dirs)
    for split, name in split_dirs.items():
        if not (root / name).is_dir():
            present = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise InputLayoutError(
                f"split folder {root / name} (split {split!r}) does not exist; {root} has "
                f"folders {present}. Create it or set split_dirs to the folders you have."
            )
    unused: list[str] = []
    labelled = {s: n for s, n in split_dirs.items() if s != UNLABELLED_SPLIT}
    per_split = {s: _class_folders(root / n, unused) for s, n in labelled.items()}
    train_split = "train" if "train" in per_split else next(iter(per_split), None)
    if train_split is not None and not per_split[train_split]:
        raise InputLayoutError(
            f"{root / split_dirs[train_split]} has no class folders: put each class's "
            "images in a folder named after the class."
        )
    train_classes = sorted(per_split[train_split]) if train_split is not None else []
    if class_map is not None:
        class_names = read_class_map(class_map)
        missing = sorted(set(train_classes) - set(class_names))
        if missing:
            raise InputLayoutError(
                f"class map {class_map} lacks {len(missing)} class folder(s) of "
                f"{root / split_dirs[train_split]}: {_few(missing)}. Add them to the CSV."
            )
    else:
        class_names = train_classes
    index = {name: i for i, name in enumerate(class_names)}

    splits: dict[str, list[Item]] = {}
    for split, folders in per_split.items():
        unknown = sorted(set(folders) - set(index))
        if unknown:
            known_from = f"class map {class_map}" if class_map else f"{split_dirs[train_split]}/"
            raise InputLayoutError(
                f"{root / split_dirs[split]} has class folder(s) not in {known_from}: "
                f"{_few(unknown)}. Fix the folder names or add the classes to train."
            )
        items = []
        for name, folder in folders.items():
            files = _image_files(folder, unused)
            if not files:
                raise InputLayoutError(
                    f"class folder {folder} has no image files ({' '.join(IMAGE_EXTENSIONS)}); "
                    "add its images or remove the folder."
                )
            items += [Item(f.stem, index[name], str(f), split) for f in files]
        splits[split] = _sorted_unique(items, root / split_dirs[split])
    if UNLABELLED_SPLIT in split_dirs:
        folder = root / split_dirs[UNLABELLED_SPLIT]
        splits[UNLABELLED_SPLIT] = _scan_unlabelled(folder, unused)
    splits = {s: splits[s] for s in split_dirs}  # keep the configured split order
    return Listing(class_names, splits, sorted(unused), source=f"folders:{root}")


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _class_folders(split_dir: Path, unused: list[str]) -> dict[str, Path]:
    """Class name -> folder; loose files in the split folder are unused."""
    folders = {}
    for entry in sorted(filter(_visible, split_dir.iterdir())):
        if entry.is_dir():
            folders[entry.name] = entry
        else:
            unused.append(str(entry))
    return folders


def _image_files(folder: Path, unused: list[str]) -> list[Path]:
    """Image files under ``folder`` (recursively, like ImageFolder), hidden ones skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if is_image_file(name):
                found.append(path)
            else:
                unused.append(str(path))
    return found


def _scan_unlabelled(folder: Path, unused: list[str]) -> list[Item]:
    subfolders = [p for p in folder.iterdir() if _visible(p) and p.is_dir()]
    if len(subfolders) > 1:
        raise InputLayoutError(
            f"{folder} has {len(subfolders)} folders ({_few(sorted(p.name for p in subfolders))})"
            " but the test split is unlabelled and expects its images in one folder such as "
            "mistery_category. Merge them, or list the folder as a labelled split instead."
        )
    files = _image_files(folder, unused)
    if not files:
        raise InputLayoutError(f"test folder {folder} has no image files; add the test images.")
    return _sorted_unique([Item(f.stem, -1, str(f), UNLABELLED_SPLIT) for f in files], folder)


def _sorted_unique(items: list[Item], where: Path) -> list[Item]:
    """Sort by id; two files with the same id in one split are an error naming both."""
    by_id: dict[str, list[str]] = defaultdict(list)
    for item in items:
        by_id[item.id].append(item.path)
    clashes = {i: paths for i, paths in by_id.items() if len(paths) > 1}
    if clashes:
        shown = [f"{i!r}: {' and '.join(sorted(p))}" for i, p in sorted(clashes.items())]
        raise InputLayoutError(
            f"{len(clashes)} duplicate id(s) in {where} (the id is the file name without "
            f"extension, so it must be unique per split): {_few(shown)}. Rename or remove one."
        )
    return sorted(items, key=lambda item: item.id)


def read_class_map(path: str | os.PathLike, option: str = "--input.class_map") -> list[str]:
    """Read a ``class_name,label`` CSV; return class names in label order (0..K-1)."""
    rows, header = _read_csv(path, option, "a class_name,label CSV file")
    name_col = next((c for c in CLASS_MAP_NAME_COLUMNS if c in header), None)
    label_col = next((c for c in CLASS_MAP_LABEL_COLUMNS if c in header), None)
    if name_col is None or label_col is None:
        raise InputLayoutError(
            f"class map {path} has header {header}; expected columns class_name,label."
        )
    by_label: dict[int, str] = {}
    for line, row in rows:
        try:
            label = int(row[label_col])
        except ValueError:
            raise InputLayoutError(
                f"{path} line {line}: label {row[label_col]!r} is not an int"
            ) from None
        if label in by_label:
            raise InputLayoutError(f"{path} line {line}: label {label} appears twice")
        by_label[label] = row[name_col]
    names = [by_label.get(i) for i in range(len(by_label))]
    if None in names:
        found = sorted(by_label)
        raise InputLayoutError(
            f"class map {path}: labels must be 0..{len(by_label) - 1}, each once; it has "
            f"{found[0]}..{found[-1]}{' with gaps' if found[-1] - found[0] + 1 != len(found) else ''}"
            " (labels count from 0, as Category in the submission)."
        )
    repeated = [n for n, c in Counter(names).items() if c > 1]
    if repeated:
        raise InputLayoutError(f"{path}: class name(s) listed twice: {_few(repeated)}")
    return names


# ---------------------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------------------


def hf_listing(
    *,
    dataset: str,
    splits: dict[str, str],
    image_column: str = "image",
    label_column: str | None = "label",
    id_column: str | None = None,
    data_dir: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> Listing:
    """List a ``datasets`` dataset: a hub id, a local folder, or ``"imagefolder"`` + data_dir.

    ``splits`` maps our split names (train/val/test) to the dataset's split names. Class
    names come from the label column's ``ClassLabel`` (of train, or the first split) or,
    without one, are the sorted distinct label values of that split. A ``test`` split
    without the label column is unlabelled (-1). The image column is read undecoded so its
    bytes go through the same guard as folder images.
    """
    import datasets  # deferred: importing datasets costs ~1 s, folder inputs do not need it

    name = data_dir if dataset == "imagefolder" and data_dir else dataset
    try:
        loaded = datasets.load_dataset(
            dataset, data_dir=data_dir, revision=revision, cache_dir=cache_dir
        )
    except Exception as err:  # hub offline, no such dataset or folder, unreadable files...
        raise InputLayoutError(
            f"cannot load dataset {name!r}: {type(err).__name__}: {str(err)[:300]}. Use a hub "
            "id (downloaded elsewhere with `hf download --repo-type dataset ID` and reused "
            "with HF_HUB_OFFLINE=1), a local dataset folder, or dataset: imagefolder with "
            "data_dir: a folder of <split>/<class>/ images."
        ) from err
    missing = {ours: theirs for ours, theirs in splits.items() if theirs not in loaded}
    if missing:
        raise InputLayoutError(
            f"dataset {name} has splits {sorted(loaded)}, not {sorted(missing.values())} "
            f"(asked for as {sorted(missing)}); set the config's split names to existing ones."
        )
    tables = {ours: loaded[theirs] for ours, theirs in splits.items()}
    for ours, table in tables.items():
        needed = [c for c in (image_column, id_column) if c is not None]
        if label_column is not None and ours != UNLABELLED_SPLIT:
            needed.append(label_column)
        absent = [c for c in needed if c not in table.column_names]
        if absent:
            raise InputLayoutError(
                f"dataset {name} split {splits[ours]!r} has columns {table.column_names}, "
                f"no {absent}; set image_column/label_column/id_column to existing ones."
            )
    class_names, to_label = _hf_classes(tables, label_column, name)
    listing_splits = {}
    for ours, table in tables.items():
        rows = range(table.num_rows)
        raw = _column(table, label_column) if label_column in table.column_names else None
        labels = [-1] * table.num_rows if raw is None else [to_label(v, ours) for v in raw]
        ids = [str(v) for v in _column(table, id_column)] if id_column else None
        paths = [f"hf://{name}/{splits[ours]}/{row}" for row in rows]
        items = [
            Item(ids[row] if ids else f"{ours}-{row:08d}", labels[row], paths[row], ours)
            for row in rows
        ]
        listing_splits[ours] = _sorted_unique(items, Path(f"{name}[{splits[ours]}]"))
    images = {ours: _undecoded(t, image_column, name) for ours, t in tables.items()}
    hf = HFImageSource(images, image_column)
    return Listing(class_names, listing_splits, [], source=f"hf:{name}", hf=hf)


def _column(table: Any, name: str) -> list:
    return table.data.column(name).to_pylist()  # straight from Arrow: no per-row formatting


def _undecoded(table: Any, column: str, name: str) -> Any:
    """Only the image column, as {bytes, path} cells that load_image decodes under its guard."""
    import datasets

    try:
        return table.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    except Exception as err:  # a column of numbers, say, cannot become an image
        raise InputLayoutError(
            f"dataset {name} column {column!r} ({table.features[column]}) is not an image "
            "column; set image_column to the column holding images, paths or image bytes."
        ) from err


def _hf_classes(tables: dict[str, Any], label_column: str | None, name: str):
    """Class names and a value -> label function, from ClassLabel or sorted unique values."""
    if label_column is None:
        return [], lambda value, split: -1
    reference = "train" if "train" in tables else next(iter(tables))
    names = getattr(tables[reference].features[label_column], "names", None)
    if names is not None:  # ClassLabel: the stored ints are the labels; -1 means unknown
        return list(names), lambda value, split: -1 if value is None else int(value)
    values = sorted({v for v in _column(tables[reference], label_column) if v is not None})
    index = {v: i for i, v in enumerate(values)}

    def to_label(value, split):
        if value is None or (split == UNLABELLED_SPLIT and value not in index):
            return -1
        if value not in index:
            raise InputLayoutError(
                f"dataset {name} split {split!r} has label {value!r}, absent from split "
                f"{reference!r} whose labels define the classes ({_few(values)})."
            )
        return index[value]

    return [str(v) for v in values], to_label


# ---------------------------------------------------------------------------------------
# captions.csv from another captioner
# ---------------------------------------------------------------------------------------


def read_captions_csv(
    path: str | os.PathLike,
    *,
    expected_ids: dict[str, list[str]] | None = None,
    option: str = "--input.captions_csv",
) -> dict[str, str]:
    """Read ``id,caption`` rows; with ``expected_ids`` (split -> ids) check none is missing.

    Empty captions are kept (the caller counts them). Ids must be unique in the file, and,
    since a caption is looked up by id alone, unique across the expected splits too.
    """
    rows, header = _read_csv(path, option, "an id,caption CSV file (one caption per image id)")
    if header != ["id", "caption"]:
        raise InputLayoutError(
            f"captions file {path} has header {header}; expected exactly: id,caption"
        )
    captions: dict[str, str] = {}
    first_line: dict[str, int] = {}
    duplicates = []
    for line, row in rows:
        image_id = row["id"].strip()
        if image_id in captions:
            duplicates.append(f"{image_id!r} (lines {first_line[image_id]} and {line})")
        captions[image_id] = row["caption"]
        first_line.setdefault(image_id, line)
    if duplicates:
        raise InputLayoutError(
            f"captions file {path} has {len(duplicates)} duplicate id(s): {_few(duplicates)}. "
            "Keep one caption per image id."
        )
    if expected_ids is not None:
        seen = Counter(i for ids in expected_ids.values() for i in ids)
        shared = sorted(i for i, c in seen.items() if c > 1)
        if shared:
            raise InputLayoutError(
                f"{len(shared)} image id(s) occur in more than one split ({_few(shared)}), so "
                f"captions in {path}, keyed by id alone, cannot tell them apart."
            )
        # ids written as file names (cat_001.png): the id is the name without extension
        stems = {Path(k).stem: k for k in captions if Path(k).suffix.lower() in IMAGE_EXTENSIONS}
        for split, ids in expected_ids.items():
            missing = [i for i in ids if i not in captions]
            named = [stems[i] for i in missing if i in stems]
            if named:
                raise InputLayoutError(
                    f"captions file {path} gives {len(named)} ids as file names ({_few(named)}); "
                    "an id is the file name without extension (cat_001 for cat_001.png): write "
                    "the ids that way."
                )
            if missing:
                raise InputLayoutError(
                    f"captions file {path} lacks {len(missing)} of the {len(ids)} ids of split "
                    f"{split!r}, e.g. {_few(missing)}. Caption those images (or drop the file "
                    "to caption with BLIP-2)."
                )
    return captions


def _read_csv(
    path: str | os.PathLike, option: str, expected: str
) -> tuple[list[tuple[int, dict[str, str]]], list[str]]:
    """Rows as (line number, dict) and the stripped header; errors name the option, the
    file and the line (a missing file, a directory, not UTF-8: :func:`read_option_file`)."""
    path = Path(path)
    try:
        text = read_option_file(path, option, expected)  # UTF-8; an Excel BOM tolerated
    except OptionFileError as err:
        raise InputLayoutError(str(err)) from None
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        rows = []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise InputLayoutError(
                    f"{path} line {reader.line_num}: {len(row)} fields, header has "
                    f"{len(header)} ({','.join(header)}); quote fields that contain commas."
                )
            rows.append((reader.line_num, dict(zip(header, row, strict=True))))
    return rows, header


def _few(values: Iterable[Any]) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:_EXAMPLES])
    return shown + (f" ... ({len(values)} in all)" if len(values) > _EXAMPLES else "")


def build_listing(cfg: PrepConfig):
    """The items to process (raises InputLayoutError on a bad layout, before any model)."""
    if cfg.input.kind == "hf":
        if not cfg.input.dataset or not cfg.input.splits:
            raise ValueError("input.kind hf needs input.dataset and input.splits in the config")
        return hf_listing(
            dataset=cfg.input.dataset,
            splits=cfg.input.splits,
            image_column=cfg.input.image_column,
            label_column=cfg.input.label_column,
            id_column=cfg.input.id_column,
            data_dir=cfg.input.data_dir,
            revision=cfg.input.revision,
        )
    if not cfg.input.root:
        raise ValueError("input.root is not set: pass --input.root /path/to/competition/folder")
    return scan_kaggle(
        cfg.input.root, split_dirs=cfg.input.split_dirs, class_map=cfg.input.class_map
    )
