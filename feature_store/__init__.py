"""The feature store: the artifact between data_prep and every later stage.

A store is a directory::

    STORE/manifest.json        models, dims, dtype, class names, counts, config (see DESIGN.md)
    STORE/failures.csv         file,reason for every input that was skipped
    STORE/<split>/             one `datasets` dataset per split (datasets.load_from_disk)

with columns ``id`` (str), ``label`` (int, -1 when unknown), ``path`` (str),
``caption`` (str), ``image_emb`` and ``text_emb`` (fixed-length float vectors).

Readers go through :func:`open_store` and :func:`load_arrays`, which check the manifest
once and hand back numpy arrays without a per-row Python loop.
"""

from feature_store.layout import (
    COLUMNS,
    FAILURES_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SplitArrays,
    StoreError,
    StoreInfo,
    load_arrays,
    load_split,
    open_store,
    write_store,
)

__all__ = [
    "COLUMNS",
    "FAILURES_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "SplitArrays",
    "StoreError",
    "StoreInfo",
    "load_arrays",
    "load_split",
    "open_store",
    "write_store",
]
