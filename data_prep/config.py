"""The prep config: one dataclass per section, parsed by jsonargparse.

$ python -m data_prep -c configs/prep/kaggle.yaml --image.pooling cls+mean --run.out stores/x
$ python -m data_prep --print_config > my.yaml          # a complete config to edit

Only plain values live here, so the resolved config can be stored in the manifest and
hashed into the store's fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

POOLINGS_IMAGE = ("cls", "mean", "cls+mean", "mean_all_tokens")
# mean_unmasked_reference: the reference code's BERT pooling, for exact reproduction only.
POOLINGS_TEXT = ("cls", "mean", "mean_unmasked_reference")
INPUT_KINDS = ("kaggle", "hf", "report_embeddings")
RESAMPLES = ("bicubic", "bilinear", "nearest", "lanczos")
DTYPES = ("auto", "fp32", "bf16", "fp16")
EMB_DTYPES = ("float16", "float32")
RUN_MODES = ("build", "add")


@dataclass
class InputConfig:
    """Where the images come from: a Kaggle folder tree or a Hugging Face dataset.

    Args:
        kind: ``kaggle`` (folders), ``hf`` (a `datasets` dataset of images), or
            ``report_embeddings`` (import precomputed embeddings with the reference
            report's schema, see data_prep/import_embeddings.py; no model runs).
        root: kaggle: the folder holding train_images/ val_images/ test_images/.
        split_dirs: kaggle: split name -> folder name (default: the competition's three).
        class_map: kaggle, report_embeddings: CSV ``class_name,label`` (or the
            reference's ``class,category``) replacing the sorted class-name order.
        dataset: hf: a hub id, or ``imagefolder`` with data_dir; report_embeddings: a hub
            id or a local folder of parquet files.
        splits: hf: our split name -> the dataset's split name.
        image_column: hf: the column holding the images.
        label_column: hf: the column holding the class labels.
        id_column: hf: a column of unique ids (default: the row index).
        data_dir: hf: local data directory (for imagefolder).
        revision: hf: dataset revision.
        captions_csv: ``id,caption`` file from another captioner; BLIP-2 is then not run.
        class_names: CSV ``folder,name``: readable class names for class-name prompts
            (zero_shot, caption_scores sets). Default: WordNet lemmas (from timm) when the
            class folders are ImageNet synsets, else the folder names.
    """

    kind: str = "kaggle"
    root: str | None = None
    split_dirs: dict[str, str] | None = None
    class_map: str | None = None
    dataset: str | None = None
    splits: dict[str, str] | None = None
    image_column: str = "image"
    label_column: str = "label"
    id_column: str | None = None
    data_dir: str | None = None
    revision: str | None = None
    captions_csv: str | None = None
    class_names: str | None = None


@dataclass
class DemoConfig:
    """Generate procedurally drawn images and tiny UNTRAINED models where missing.

    Args:
        enabled: build the demo inputs and models, and use them.
        images: where the demo images go (becomes input.root).
        models: where the tiny dinov2/ blip2/ bert/ models go.
        num_classes: demo classes (one drawn shape each).
        per_class: images per class and split, e.g. {train: 12, val: 4, test: 4}.
        size: image side in pixels.
        seed: drawing seed.
    """

    enabled: bool = False
    images: str = "demo/images"
    models: str = "demo/models"
    num_classes: int = 10
    per_class: dict[str, int] | None = None
    size: int = 96
    seed: int = 0


@dataclass
class ImageConfig:
    """The image encoder (DINOv2 by default).

    Args:
        model: hub id or local directory (transformers), or a timm model name (timm).
        library: ``transformers`` (AutoModel + its image processor) or ``timm``.
        revision: hub revision (transformers).
        pooling: ``cls``, ``mean`` (patch tokens), ``cls+mean`` (concatenated), or
            ``mean_all_tokens`` (every output token averaged, CLS and registers included:
            the reference report's ``last_hidden_state.mean(dim=1)``).
        pretrained: timm only: false gives random weights (benchmarks).
        weights_file: timm only: a local .safetensors/.pth of the model's weights (offline).
        squash: resize every image to ``squash`` x ``squash``, ignoring its aspect ratio,
            before the model's own preprocessing (the reference report's
            ``Image.open(p).resize((224, 224))``); null keeps the aspect ratio (default).
        squash_resample: the PIL filter of that resize: ``bicubic`` (PIL's default, what the
            reference's dataset script got) or ``bilinear`` (torchvision's ``Resize``).
        processor_kwargs: overrides for the transformers image processor, e.g.
            ``{do_resize: false, do_center_crop: false}`` to feed a squashed image as is.
    """

    model: str = "facebook/dinov2-base"
    library: str = "transformers"
    revision: str | None = None
    pooling: str = "cls"
    pretrained: bool = True
    weights_file: str | None = None
    squash: int | None = None
    squash_resample: str = "bicubic"
    processor_kwargs: dict[str, Any] | None = None


@dataclass
class CaptionConfig:
    """The captioner (BLIP-2); not loaded when input.captions_csv is given.

    Args:
        model: hub id or local directory of a Blip2ForConditionalGeneration.
        revision: hub revision.
        prompt: text the caption continues ("" for none).
        keep_prompt: store "a sketch of a dog" rather than "a dog".
        max_new_tokens: generated tokens at most.
        num_beams: beam search width (1: greedy).
        load_in_8bit: 8-bit weights (LLM.int8, outlier threshold 6.0); needs bitsandbytes
            and a CUDA GPU.
        dtype: the captioner's own dtype (fp32, bf16, fp16); null: run.dtype. The reference
            report ran BLIP-2 in fp16 and DINOv2/BERT in fp32.
    """

    model: str = "Salesforce/blip2-opt-2.7b"
    revision: str | None = None
    prompt: str = "a sketch of"
    keep_prompt: bool = True
    max_new_tokens: int = 20
    num_beams: int = 1
    load_in_8bit: bool = False
    dtype: str | None = None


@dataclass
class TextConfig:
    """The caption encoder (BERT).

    Args:
        model: hub id or local directory of a transformers text encoder.
        revision: hub revision.
        pooling: ``cls``, or ``mean`` over real tokens (the attention mask; never padding).
            ``mean_unmasked_reference`` is the reference report's pooling, for exact
            reproduction only: the mean over every position, padding included, so an
            embedding depends on the longest caption in its batch.
        max_length: captions are truncated to this many tokens.
    """

    model: str = "bert-base-uncased"
    revision: str | None = None
    pooling: str = "mean"
    max_length: int = 128


@dataclass
class RunConfig:
    """Where the store goes and how the work is spread.

    Args:
        out: the store directory.
        batch_size: images per model batch.
        shard_size: rows per shard file: the unit of resume and of work per rank.
        num_workers: DataLoader workers decoding and preprocessing images (at most the
            CPU cores this process may use; more are capped, with one line).
        accelerator: Lightning accelerator (auto, cpu, gpu).
        devices: Lightning devices; N > 1 shards the work over N processes.
        num_nodes: Lightning nodes (the store directory must be shared).
        strategy: Lightning strategy (auto, ddp, ddp_spawn).
        dtype: model dtype: auto (bf16 on a GPU that has it, else fp32), fp32, bf16, fp16.
        emb_dtype: how embeddings are stored: float16 or float32.
        progress: progress bars and the end summary.
        mode: ``build`` (the store's rows, then any ``features``) or ``add`` (only the
            ``features`` missing from the finished store at ``out``; image, caption and
            text are not used).
        replace_feature: the name of a feature set to delete and extract again (one that
            exists with another fingerprint is otherwise refused).
    """

    out: str = "stores/prep"
    batch_size: int = 32
    shard_size: int = 512
    num_workers: int = 2
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    dtype: str = "auto"
    emb_dtype: str = "float16"
    progress: bool = True
    mode: str = "build"
    replace_feature: str | None = None


@dataclass
class FeatureSetConfig:
    """One named feature set (data_prep/set_kinds.py lists the kinds).

    Args:
        name: the set's name: its column, its directory STORE/features/<name>, its key in
            load_features. ``image`` and ``text`` are the rows' own sets.
        kind: hf_image, timm_image, hf_text, zero_shot, caption_scores, imagenet_logits.
        model: hub id or local directory (transformers), or a timm model name.
        library: transformers or timm (imagenet_logits takes either).
        revision: hub revision (transformers).
        pooling: image: cls, mean, cls+mean, mean_all_tokens, pooler, embed (dual tower),
            head (timm pre-logits); text: mean, cls, embed; null: the kind's first.
        tta: test-time transforms averaged with the image: [hflip], [hflip, vflip].
        templates: class prompts with {} for the class name (scores kinds); null: a set
            of sketch prompts.
        max_length: text tokens at most (null: the tokenizer's own limit).
        pretrained: timm: false gives random weights (benchmarks).
        weights_file: timm: a local .safetensors/.pth of the weights (offline).
        model_kwargs: timm: create_model keyword arguments (img_size, ...).
        processor_kwargs: transformers: image processor overrides.
    """

    name: str
    kind: str
    model: str
    library: str = "transformers"
    revision: str | None = None
    pooling: str | None = None
    tta: list[str] = field(default_factory=list)
    templates: list[str] | None = None
    max_length: int | None = None
    pretrained: bool = True
    weights_file: str | None = None
    model_kwargs: dict[str, Any] | None = None
    processor_kwargs: dict[str, Any] | None = None


@dataclass
class PrepConfig:
    input: InputConfig = field(default_factory=InputConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    run: RunConfig = field(default_factory=RunConfig)
    features: list[FeatureSetConfig] = field(default_factory=list)


def _check(cfg: PrepConfig) -> None:
    """Reject impossible values with the option name and the allowed ones."""
    checks = [
        ("input.kind", cfg.input.kind, INPUT_KINDS),
        ("image.library", cfg.image.library, ("transformers", "timm")),
        ("image.pooling", cfg.image.pooling, POOLINGS_IMAGE),
        ("text.pooling", cfg.text.pooling, POOLINGS_TEXT),
        ("image.squash_resample", cfg.image.squash_resample, RESAMPLES),
        ("run.dtype", cfg.run.dtype, DTYPES),
        ("run.emb_dtype", cfg.run.emb_dtype, EMB_DTYPES),
    ]
    for name, value, allowed in checks:
        if value not in allowed:
            raise ValueError(f"--{name} {value!r} is not one of {list(allowed)}")
    if cfg.run.shard_size < 1 or cfg.run.batch_size < 1:
        raise ValueError("--run.shard_size and --run.batch_size must be >= 1")
    if cfg.caption.dtype is not None and cfg.caption.dtype not in DTYPES:
        raise ValueError(f"--caption.dtype {cfg.caption.dtype!r} is not one of {list(DTYPES)}")
    if cfg.image.squash is not None and cfg.image.squash < 1:
        raise ValueError("--image.squash must be a size in pixels >= 1 (or null for none)")
    if cfg.caption.num_beams < 1 or cfg.caption.max_new_tokens < 1:
        raise ValueError("--caption.num_beams and --caption.max_new_tokens must be >= 1")
    if cfg.run.mode not in RUN_MODES:
        raise ValueError(f"--run.mode {cfg.run.mode!r} is not one of {list(RUN_MODES)}")
    if cfg.run.mode == "add" and not cfg.features:
        raise ValueError("--run.mode add needs at least one entry under features: in the config")
    names = [f.name for f in cfg.features]
    for i, fs in enumerate(cfg.features):
        _check_set(fs, f"features[{i}]")
        if names.count(fs.name) > 1:
            raise ValueError(f"features: the name {fs.name!r} is given twice; names must differ")


def _check_set(fs: FeatureSetConfig, where: str) -> None:
    """A feature set's kind, pooling, library, name and tta, against the registry."""
    import re

    from data_prep.set_kinds import TTA, kind_of
    from feature_store.layout import COLUMNS

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", fs.name or ""):
        raise ValueError(f"{where}.name {fs.name!r}: use letters, digits, _ . - (a file name)")
    if fs.name in ("image", "text"):
        raise ValueError(
            f"{where}.name {fs.name!r} collides with the rows' own {fs.name} set; choose "
            "another name"
        )
    if fs.name in COLUMNS:  # a set's shards hold `id` and a column named after the set
        raise ValueError(
            f"{where}.name {fs.name!r} collides with a column of the store's rows "
            f"{list(COLUMNS)}; choose another name"
        )
    try:
        kind = kind_of(fs.kind)
    except ValueError as err:
        raise ValueError(f"{where}.kind: {err}") from None
    pooling = fs.pooling if fs.pooling is not None else kind.poolings[0]
    if kind.poolings == ("",) and pooling:
        raise ValueError(f"{where}.pooling {fs.pooling!r}: kind {fs.kind} takes no pooling")
    if pooling not in kind.poolings:
        raise ValueError(f"{where}.pooling {fs.pooling!r} is not one of {list(kind.poolings)} "
                         f"for kind {fs.kind}")  # fmt: skip
    if fs.library not in kind.libraries:
        raise ValueError(f"{where}.library {fs.library!r} is not one of {list(kind.libraries)} "
                         f"for kind {fs.kind}")  # fmt: skip
    bad = [t for t in fs.tta if t not in TTA]
    if bad or (fs.tta and kind.reads != "image"):
        raise ValueError(f"{where}.tta {fs.tta}: use transforms of {list(TTA)}, on image kinds "
                         "only")  # fmt: skip
    if fs.templates is not None and not all("{}" in t for t in fs.templates or [""]):
        raise ValueError(f"{where}.templates: each needs {{}} where the class name goes")


def build_parser():
    """A jsonargparse parser: `--config/-c FILE`, `--section.key value`, `--print_config`."""
    from feature_store.cli import cli_parser

    parser = cli_parser(
        "python -m data_prep",
        "Images -> BLIP-2 captions, BERT caption embeddings, image features, in a resumable "
        "feature store.",
    )
    for name in ("input", "demo", "image", "caption", "text", "run"):
        parser.add_class_arguments(
            PrepConfig.__dataclass_fields__[name].default_factory, name, sub_configs=True
        )
    parser.add_argument(
        "--features", type=list[FeatureSetConfig], default=[],
        help="named feature sets to extract (see data_prep/set_kinds.py for the kinds)",
    )  # fmt: skip
    return parser


def parse_config(argv: list[str] | None = None) -> tuple[PrepConfig, dict]:
    """Parse ``argv``; return the config and its plain-dict form (stored in the manifest)."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    plain = ns.as_dict()
    plain.pop("config", None)
    plain.pop("__path__", None)
    cfg = PrepConfig(
        input=InputConfig(**plain["input"]),
        demo=DemoConfig(**plain["demo"]),
        image=ImageConfig(**plain["image"]),
        caption=CaptionConfig(**plain["caption"]),
        text=TextConfig(**plain["text"]),
        run=RunConfig(**plain["run"]),
        features=[FeatureSetConfig(**f) for f in plain.get("features") or []],
    )
    _check(cfg)
    return cfg, plain
