"""What readers take from a store, kept per process while its files are unchanged.

$ python -c "from feature_store import cache, load_arrays as r; r('stores/demo', 'val'); print(cache.held())"

A fit, its test and its submission open the store about thirty times (the datamodule, the
callbacks, prediction, the class prior, the submission checks) and read each split three
or four times. Every reader goes through :func:`cached`, so a process parses the manifest
once, hashes each shard list once and reads each split (and each added set of it) once:

- ``(root, "manifest")``: the parsed, checked ``manifest.json`` (``open_store``);
- ``(root, "verified", split_dir)``: a shard list that passed its size and SHA-256 check
  (:func:`feature_store.integrity.verify_files`);
- ``(root, "rows", split)``: the split's memory-mapped dataset, its ids, labels, captions
  and paths (:func:`feature_store.layout.split_rows`, behind ``load_split``,
  ``load_arrays`` and ``load_features``);
- ``(root, "set", name, split)``: an added set's memory-mapped table, ids checked
  against the rows' (``load_features``).

Each entry is kept with a stamp of the files it was read from (path, inode, size, mtime,
ctime): every lookup stats them again, and an entry whose files changed (a shard damaged
or replaced, a set added, the manifest rewritten) is read, verified and decoded again.
Files modified in the last :data:`RACY_SECONDS` are never cached: a rewrite within the
filesystem's timestamp granularity would leave the stamp unchanged (git's "racy" rule).

Entries of one store are held at a time (reading another store drops them). Readers hand
out copies of what is held (writable, theirs to change); the embedding matrices are
converted from the mapped Arrow memory at each call (``SplitRows`` says why), so the
cache holds no float arrays: memory stays one copy per caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# Files modified this recently are re-read even when their size and mtime look unchanged.
RACY_SECONDS = 2.0

_STORE: list[Path | None] = [None]  # the store whose entries _ENTRIES holds
_ENTRIES: dict[tuple, tuple[tuple, Any]] = {}  # slot -> (stamp, value)


def stamp(paths: Sequence[Path]) -> tuple | None:
    """A key that changes whenever one of ``paths`` is rewritten (path, inode, size, mtime,
    ctime), or None when one is missing or too recently modified to trust its timestamp."""
    key = []
    now = time.time()
    for path in paths:
        try:
            st = Path(path).stat()
        except OSError:
            return None
        if now - st.st_mtime < RACY_SECONDS:
            return None
        key.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(key)


def files_of(directory: Path) -> list[Path]:
    """The files directly in ``directory`` (a split's shards and indexes), sorted; the
    directory itself when it is missing, so that its stamp is None."""
    try:
        return sorted(p for p in directory.iterdir() if p.is_file())
    except OSError:
        return [directory]


def cached(
    slot: tuple,
    paths: Sequence[Path],
    read: Callable[[], T],
    *,
    token: Hashable = None,
) -> T:
    """``read()``, or what it returned for ``slot`` last time while none of ``paths`` (nor
    ``token``: what else the value was read against, such as manifest records) changed.

    ``slot`` is ``(resolved store root, kind, ...)``. ``read`` raising leaves nothing cached.
    """
    if _STORE[0] != slot[0]:
        clear()
        _STORE[0] = slot[0]
    key = stamp(paths)
    held = _ENTRIES.pop(slot, None)
    if key is not None and held is not None and held[0] == (key, token):
        _ENTRIES[slot] = held
        return held[1]
    value = read()
    if key is not None:  # stamped before reading: a file changed meanwhile reads again next time
        _ENTRIES[slot] = ((key, token), value)
    return value


def clear() -> None:
    """Forget every entry (the next reader parses, hashes and decodes again)."""
    _ENTRIES.clear()
    _STORE[0] = None


def held() -> list[tuple]:
    """The slots held now (for tests and benches)."""
    return list(_ENTRIES)
