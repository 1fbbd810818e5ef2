"""The feature store: the artifact between data_prep and every later stage.

A store is a directory::

    STORE/manifest.json        models, dims, dtype, class names, counts, config (see DESIGN.md)
    STORE/failures.csv         file,reason,split,id for every input that has no row
    STORE/<split>/             one `datasets` dataset per split (datasets.load_from_disk)

with columns ``id`` (str), ``label`` (int, -1 when unknown), ``path`` (str),
``caption`` (str), ``image_emb`` and ``text_emb`` (fixed-length float vectors).

Readers go through :func:`open_store` and :func:`load_arrays`, which check the manifest
once, verify each shard against the size and checksum recorded when it was written
(:mod:`feature_store.integrity`), and hand back numpy arrays without a per-row Python
loop. This package owns the format: data_prep writes through :func:`store_features` and
:func:`write_failures`.
"""

from feature_store.layout import (
    COLUMNS,
    FAILURES_COLUMNS,
    FAILURES_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SplitArrays,
    StoreError,
    StoreInfo,
    load_arrays,
    load_split,
    make_manifest,
    open_store,
    read_failures,
    store_features,
    write_failures,
    write_manifest,
    write_store,
)

__all__ = [
    "COLUMNS",
    "FAILURES_COLUMNS",
    "FAILURES_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "SplitArrays",
    "StoreError",
    "StoreInfo",
    "load_arrays",
    "load_split",
    "make_manifest",
    "open_store",
    "read_failures",
    "store_features",
    "write_failures",
    "write_manifest",
    "write_store",
]
