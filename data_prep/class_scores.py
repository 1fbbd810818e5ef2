"""Class-name priors: zero-shot image scores, caption-to-class-name scores, ImageNet logits.

$ python -c "from data_prep.set_kinds import KINDS; print(KINDS['zero_shot'].doc)"

Each is a ``scores`` feature set with one value per store class, in the store's class
order. The class prompts ("a sketch of a {}.", several templates) are built from readable
names (data_prep/class_names.py); each class's prompt embeddings are L2-normalised,
averaged over the templates and normalised again (CLIP's zero-shot recipe), once at load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from data_prep.config import FeatureSetConfig
from data_prep.extractors import SetExtractor, TextTower, create_timm, hf_image_processor
from data_prep.loading import load_pretrained, model_source
from data_prep.set_kinds import DEFAULT_TEMPLATES


@dataclass(frozen=True)
class Classes:
    """The store's classes: folder names (label order), readable names, where those came from."""

    folders: list[str]
    names: list[str]
    source: str


def prompt_matrix(encode, names: list[str], templates: list[str], batch: int = 256):
    """[C, D]: per class, the normalised mean of its normalised prompt embeddings."""
    prompts = [t.format(n) for n in names for t in templates]
    with torch.inference_mode():
        emb = torch.cat([encode(prompts[i : i + batch]) for i in range(0, len(prompts), batch)])
    emb = nn.functional.normalize(emb.float(), dim=-1).view(len(names), len(templates), -1)
    return nn.functional.normalize(emb.mean(dim=1), dim=-1)


def _templates(fs: FeatureSetConfig) -> list[str]:
    return list(fs.templates or DEFAULT_TEMPLATES)


class ZeroShotScores(SetExtractor):
    """A CLIP / SigLIP image's logit against every class's prompts (the model's own
    ``logit_scale`` and, for SigLIP, ``logit_bias``): dim = number of classes."""

    def __init__(self, fs: FeatureSetConfig, *, dtype: torch.dtype, classes: Classes):
        super().__init__(fs, dtype=dtype)
        from transformers import AutoModel

        model = load_pretrained("zero-shot model", self.option, AutoModel.from_pretrained,
                                fs.model, revision=fs.revision, dtype=dtype).eval()  # fmt: skip
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ValueError(f"features[{fs.name}] (zero_shot) needs a CLIP / SigLIP checkpoint; "
                             f"{fs.model} is a {type(model).__name__}")  # fmt: skip
        self.model = model
        # Not a submodule: the prompts are embedded once, here, and the model is self.model.
        text = TextTower(fs, dtype=dtype, pooling="embed", option=self.option, model=model)
        self.register_buffer("classes", prompt_matrix(text.encode, classes.names, _templates(fs)))
        self.text_preprocessing = {"max_length": text.max_length, "padding": str(text.padding)}
        self.scale = float(model.logit_scale.detach().exp())
        self.bias = float(getattr(model, "logit_bias", torch.zeros(1)).detach().reshape(-1)[0])
        self.source = model_source(fs.model, model)
        self.preprocess = hf_image_processor(fs)
        self.preprocessing = {**self.preprocess.description, "text": self.text_preprocessing}
        self.extra = _class_fields(fs, classes)
        self.dim = len(classes.names)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=pixel_values.to(self.dtype))
        image = out if isinstance(out, torch.Tensor) else out.pooler_output
        image = nn.functional.normalize(image.float(), dim=-1)
        return self.scale * image @ self.classes.T + self.bias


class CaptionScores(SetExtractor):
    """Cosine similarity of the stored caption to every class's prompts, both embedded by
    the same text encoder (MiniLM, BERT, or a CLIP / SigLIP text tower with ``embed``)."""

    def __init__(self, fs: FeatureSetConfig, *, dtype: torch.dtype, classes: Classes):
        super().__init__(fs, dtype=dtype)
        self.text = TextTower(fs, dtype=dtype, pooling=self.pooling, option=self.option)
        self.register_buffer("classes", prompt_matrix(self.text.encode, classes.names,
                                                      _templates(fs)))  # fmt: skip
        self.source = self.text.source
        self.preprocessing = {"max_length": self.text.max_length, "padding": str(self.text.padding)}
        self.extra = _class_fields(fs, classes)
        self.dim = len(classes.names)

    def forward(self, captions: list[str]) -> torch.Tensor:
        emb = nn.functional.normalize(self.text.encode(captions).float(), dim=-1)
        return emb @ self.classes.T.to(emb.device)


class ImageNetLogits(SetExtractor):
    """An ImageNet classifier's logits (timm or transformers) for exactly the store's
    synset classes, in the store's class order."""

    def __init__(self, fs: FeatureSetConfig, *, dtype: torch.dtype, classes: Classes):
        super().__init__(fs, dtype=dtype)
        from timm.data import infer_imagenet_subset

        from data_prep.class_names import synset_indices

        if fs.library == "timm":
            self.model, self.source = create_timm(fs, self.option)
            num = int(self.model.num_classes)
            subset = infer_imagenet_subset(self.model)
            self.preprocess = hf_image_processor(fs, self.model)
        else:
            from transformers import AutoModelForImageClassification

            self.model = load_pretrained(
                "image classifier", self.option, AutoModelForImageClassification.from_pretrained,
                fs.model, revision=fs.revision, dtype=dtype,
            ).eval()  # fmt: skip
            self.source = model_source(fs.model, self.model)
            num = int(self.model.config.num_labels)
            subset = infer_imagenet_subset({"num_classes": num})
            self.preprocess = hf_image_processor(fs)
        if subset is None:
            raise ValueError(f"features[{fs.name}]: {fs.model} has {num} classes, not an ImageNet "
                             "subset timm knows (1000 for ImageNet-1k)")  # fmt: skip
        self.model.to(dtype)
        self.register_buffer("index", torch.tensor(synset_indices(classes.folders, subset)))
        self.preprocessing = self.preprocess.description
        self.extra = {"imagenet_subset": subset, "classes": len(classes.folders)}
        self.dim = len(classes.folders)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(self.dtype)
        if self.fs.library == "timm":
            logits = self.model(pixel_values)
        else:
            logits = self.model(pixel_values=pixel_values).logits
        return logits.float()[:, self.index]


def _class_fields(fs: FeatureSetConfig, classes: Classes) -> dict:
    """What a class-name score means: its prompts and the names they were filled with."""
    return {"templates": _templates(fs), "class_names": classes.names,
            "class_names_source": classes.source}  # fmt: skip
