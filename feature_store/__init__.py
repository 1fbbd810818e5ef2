"""The feature store: the artifact between data_prep and every later stage.

A store is a directory (the full contract is in docs/architecture.md)::

    STORE/manifest.json        models, dims, dtype, class names, counts, shard checksums, config
    STORE/failures.csv         file,reason,split,id for every input that has no row
    STORE/dataset_dict.json    the split names: the root is a `datasets.DatasetDict` directory
    STORE/<split>/             one `datasets` dataset per split (shard-*.arrow, state.json,
                               dataset_info.json)

with columns ``id`` (str), ``label`` (a ``ClassLabel`` of the class names, -1 when
unknown), ``path`` (str), ``caption`` (str), ``image_emb`` and ``text_emb`` (fixed-length
float vectors). ``datasets.load_from_disk(STORE)`` opens it as a DatasetDict.

A store holds named feature sets (``manifest.json["features"]``): ``image`` and ``text``
are the ``image_emb`` / ``text_emb`` columns, further sets (other backbones, class-name
scores) live in ``STORE/features/<name>/`` and are read with :func:`load_features`
(:mod:`feature_store.sets`); data_prep's add mode extracts one, :func:`add_feature_set` adds
one from arrays computed elsewhere (:mod:`feature_store.set_writer`).

Readers go through :func:`open_store` and :func:`load_arrays`, which check the manifest
once, verify each shard against the size and checksum recorded when it was written
(:mod:`feature_store.integrity`), and hand back numpy arrays without a per-row Python
loop, each split read once per process while its files are unchanged
(:mod:`feature_store.cache`); :func:`load_dataset_dict` gives the verified DatasetDict.
This package owns the format: every writer (data_prep, the embeddings import, synthetic stores,
:func:`from_dataset_dict`) goes through :mod:`feature_store.writer`.
"""

from feature_store.layout import (
    COLUMNS,
    DATASET_DICT_NAME,
    FAILURES_COLUMNS,
    FAILURES_NAME,
    SplitArrays,
    load_arrays,
    load_split,
    read_failures,
    store_features,
    write_failures,
)
from feature_store.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    StoreError,
    StoreInfo,
    make_manifest,
    open_store,
    write_manifest,
)
from feature_store.set_writer import (
    FeatureSetError,
    SetNameError,
    SetShapeError,
    SetValuesError,
    add_feature_set,
)
from feature_store.sets import FEATURES_DIR, FeatureArrays, load_features
from feature_store.writer import (
    from_dataset_dict,
    load_dataset_dict,
    upgrade_store,
    write_store,
)

__all__ = [
    "add_feature_set",
    "COLUMNS",
    "DATASET_DICT_NAME",
    "FAILURES_COLUMNS",
    "FAILURES_NAME",
    "FEATURES_DIR",
    "FeatureArrays",
    "FeatureSetError",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "SplitArrays",
    "SetNameError",
    "SetShapeError",
    "SetValuesError",
    "StoreError",
    "StoreInfo",
    "from_dataset_dict",
    "load_arrays",
    "load_dataset_dict",
    "load_features",
    "load_split",
    "make_manifest",
    "open_store",
    "read_failures",
    "store_features",
    "upgrade_store",
    "write_failures",
    "write_manifest",
    "write_store",
]
