"""The prep config: one dataclass per section, parsed by jsonargparse.

$ python -m data_prep --config configs/prep/kaggle.yaml --image.pooling cls+mean --run.out stores/x
$ python -m data_prep --print_config > my.yaml          # a complete config to edit

Only plain values live here, so the resolved config can be stored in the manifest and
hashed into the store's fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

POOLINGS_IMAGE = ("cls", "mean", "cls+mean")
POOLINGS_TEXT = ("cls", "mean")
DTYPES = ("auto", "fp32", "bf16", "fp16")
EMB_DTYPES = ("float16", "float32")


@dataclass
class InputConfig:
    """Where the images come from: a Kaggle folder tree or a Hugging Face dataset."""

    kind: str = "kaggle"  # kaggle | hf
    root: str | None = None  # kaggle: the folder holding train_images/ val_images/ test_images/
    split_dirs: dict[str, str] | None = None  # kaggle: split -> folder (default: the three)
    class_map: str | None = None  # kaggle: CSV class_name,index to override sorted order
    dataset: str | None = None  # hf: hub id, or "imagefolder" with data_dir
    splits: dict[str, str] | None = None  # hf: our split name -> dataset split name
    image_column: str = "image"
    label_column: str = "label"
    id_column: str | None = None
    data_dir: str | None = None
    revision: str | None = None
    captions_csv: str | None = None  # id,caption from another captioner: BLIP-2 is not run


@dataclass
class DemoConfig:
    """Generate procedurally drawn images and tiny untrained models where missing."""

    enabled: bool = False
    images: str = "demo/images"  # becomes input.root
    models: str = "demo/models"  # dinov2/ blip2/ bert/ are built here when missing
    num_classes: int = 10
    per_class: dict[str, int] | None = None
    size: int = 96
    seed: int = 0


@dataclass
class ImageConfig:
    """The image encoder (DINOv2 by default)."""

    model: str = "facebook/dinov2-base"  # hub id or local dir (transformers); timm name (timm)
    library: str = "transformers"  # transformers | timm
    revision: str | None = None
    pooling: str = "cls"  # cls | mean (patch tokens) | cls+mean (concatenated)
    pretrained: bool = True  # timm only: False gives random weights (benchmarks)


@dataclass
class CaptionConfig:
    """The captioner (BLIP-2); skipped when input.captions_csv is given."""

    model: str = "Salesforce/blip2-opt-2.7b"
    revision: str | None = None
    prompt: str = "a sketch of"
    keep_prompt: bool = True  # the stored caption reads "a sketch of a dog", not "a dog"
    max_new_tokens: int = 20
    num_beams: int = 1
    load_in_8bit: bool = False  # needs bitsandbytes and a GPU


@dataclass
class TextConfig:
    """The caption encoder (BERT)."""

    model: str = "bert-base-uncased"
    revision: str | None = None
    pooling: str = "mean"  # cls | mean (attention-masked: padding never averaged)
    max_length: int = 128


@dataclass
class RunConfig:
    """Where the store goes and how the work is spread."""

    out: str = "stores/prep"
    batch_size: int = 32
    shard_size: int = 512  # rows per shard file: the unit of resume and of work per rank
    num_workers: int = 2  # DataLoader workers decoding and preprocessing images
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    dtype: str = "auto"  # auto: bf16 on a GPU that has it, else fp32; also fp32 | bf16 | fp16
    emb_dtype: str = "float16"  # how embeddings are stored
    progress: bool = True


@dataclass
class PrepConfig:
    input: InputConfig = field(default_factory=InputConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _check(cfg: PrepConfig) -> None:
    """Reject impossible values with the option name and the allowed ones."""
    checks = [
        ("input.kind", cfg.input.kind, ("kaggle", "hf")),
        ("image.library", cfg.image.library, ("transformers", "timm")),
        ("image.pooling", cfg.image.pooling, POOLINGS_IMAGE),
        ("text.pooling", cfg.text.pooling, POOLINGS_TEXT),
        ("run.dtype", cfg.run.dtype, DTYPES),
        ("run.emb_dtype", cfg.run.emb_dtype, EMB_DTYPES),
    ]
    for name, value, allowed in checks:
        if value not in allowed:
            raise ValueError(f"--{name} {value!r} is not one of {list(allowed)}")
    if cfg.run.shard_size < 1 or cfg.run.batch_size < 1:
        raise ValueError("--run.shard_size and --run.batch_size must be >= 1")
    if cfg.caption.num_beams < 1 or cfg.caption.max_new_tokens < 1:
        raise ValueError("--caption.num_beams and --caption.max_new_tokens must be >= 1")


def build_parser():
    """A jsonargparse parser: `--config FILE`, `--section.key value`, `--print_config`."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="python -m data_prep",
        description="Images -> BLIP-2 captions, BERT caption embeddings, image features, "
        "in a resumable feature store.",
        default_env=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML prep config")
    for name in ("input", "demo", "image", "caption", "text", "run"):
        parser.add_class_arguments(
            PrepConfig.__dataclass_fields__[name].default_factory, name, sub_configs=True
        )
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
    )
    _check(cfg)
    return cfg, plain
