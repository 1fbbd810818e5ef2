"""configs/report/* and configs/prep/report*.yaml pinned to the reference code's values.

The reference is the report's public code, cuevascarlos/recvis24_a3 (commit 8a6e050). Each
table line is (config key, value, the reference file and what there sets it). Past the
values, the tests check behaviour: the optimiser the configs build, each head against the
reference model's maths written out independently here, the poolings, the squash and the
caption length against the reference's own calls.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from data_prep.config import ImageConfig, TextConfig, parse_config
from data_prep.encoders import ImageEncoder, ImagePreprocessor, pool_tokens
from data_prep.text_encoder import TextEncoder, masked_mean
from fusion.cli import FusionCLI
from tests.fixtures_extraction import tiny_models  # noqa: F401 - a fixture
from tests.fixtures_training import small_store

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "configs" / "report"
TABLE_1 = ["dinov2", "concat", "dual_logit_l0.1", "dual_logit_l0.3"]
ROWS = [*TABLE_1, "fusion"]  # fusion: the reference's third model, not in Table 1

# Every report config: the training recipe of main_dataset.py (and main.py for DINOv2).
TRAINING = [
    ("seed_everything", 1, "main_dataset.py/main.py: --seed default 1, torch.manual_seed"),
    ("trainer.max_epochs", 10, "main_dataset.py/main.py: --epochs default 10"),
    ("trainer.check_val_every_n_epoch", 1, "main_dataset.py: validation() after every epoch"),
    ("data.batch_size", 64, "main_dataset.py/main.py: --batch-size default 64"),
    ("model.optimizer.name", "sgd", "main_dataset.py: optim.SGD(model.parameters(), ...)"),
    ("model.optimizer.lr", 0.1, "main_dataset.py/main.py: --lr default 0.1"),
    ("model.optimizer.momentum", 0.5, "main_dataset.py/main.py: --momentum default 0.5"),
    ("model.optimizer.weight_decay", 0.0, "main_dataset.py: optim.SGD without weight_decay (0)"),
    ("model.schedule.name", "constant", "main_dataset.py: no lr scheduler"),
    ("model.schedule.warmup_epochs", 0.0, "main_dataset.py: no warm-up"),
    ("model.optimizer.lr_scaling", "none", "main_dataset.py: lr 0.1 used as is at batch 64"),
    ("model.optimizer.fusion_lr_scale", 1.0, "main_dataset.py: one SGD group, alpha/beta at lr 0.1"),
    ("model.label_smoothing", 0.0, "main_dataset.py: CrossEntropyLoss(reduction='mean')"),
    ("checkpoint.monitor", "val/loss", "main_dataset.py: model_best.pth when val_loss < best"),
    ("checkpoint.mode", "min", "main_dataset.py: if val_loss < best_val_loss"),
    ("early_stopping.monitor", "val/loss", "main_dataset.py: no early stopping (see patience)"),
]

# Per row: the head. model.py classes; ModelFactory in model_factory.py sets their sizes.
HEADS = {
    "dinov2": [
        ("model.head", "visual_only", "model.py Dinov2: Dinov2ForImageClassification, frozen"),
        ("model.head_options.hidden_dims", [], "Dinov2ForImageClassification: one Linear classifier"),
        ("model.head_options.dropout", 0.0, "Dinov2ForImageClassification: no dropout before it"),
        ("model.head_options.input_norm", False, "the classifier reads the features as they are"),
    ],
    "concat": [
        ("model.head", "concat", "model.py MultiEmbeddingsClassifier: cat([visual, textual])"),
        ("model.head_options.hidden_dims", [512], "MultiEmbeddingsClassifier: nn.Linear(v + t, 512)"),
        ("model.head_options.dropout", 0.2, "MultiEmbeddingsClassifier: dropout_rate=0.2"),
        ("model.head_options.input_norm", False, "MultiEmbeddingsClassifier: no normalisation"),
    ],
    "dual_logit_l0.1": [
        ("model.head", "dual_logit", "model.py DoubleModel: weight_layer over stacked logits"),
        ("model.head_options.weighting", "penalty", "DoubleModel.regularization_loss"),
        ("model.head_options.penalty_lambda", 0.1, "report Table 1 'Proposal-v1 (lambda = 0.1)'"),
        ("model.head_options.hidden_dims", [512], "DoubleModel: nn.Linear(dim, 512) in each classifier"),
        ("model.head_options.dropout", 0.2, "DoubleModel: dropout_rate=0.2"),
        ("model.head_options.input_norm", False, "DoubleModel: no normalisation"),
    ],
    "dual_logit_l0.3": [
        ("model.head", "dual_logit", "model.py DoubleModel"),
        ("model.head_options.weighting", "penalty", "DoubleModel.regularization_loss"),
        ("model.head_options.penalty_lambda", 0.3, "main_dataset.py: + 0.3*model.regularization_loss()"),
        ("model.head_options.hidden_dims", [512], "DoubleModel: nn.Linear(dim, 512) in each classifier"),
        ("model.head_options.dropout", 0.2, "DoubleModel: dropout_rate=0.2"),
        ("model.head_options.input_norm", False, "DoubleModel: no normalisation"),
    ],
    "fusion": [
        ("model.head", "projection_ref", "model.py FusionClassifier"),
        ("model.head_options.fusion_dim", 512, "model_factory.py: FusionClassifier(..., fusion_dim=512)"),
        ("model.head_options.hidden_dims", [512], "FusionClassifier: fusion_proj Linear(2*fd, fd)"),
        ("model.head_options.dropout", 0.2, "FusionClassifier: dropout_rate=0.2"),
    ],
}

# configs/prep/report.yaml: dataset_generation.py, which built the published dataset.
PREP = [
    ("image.model", "facebook/dinov2-base", "AutoModel.from_pretrained('facebook/dinov2-base')"),
    ("image.library", "transformers", "transformers AutoModel / AutoProcessor"),
    ("image.pooling", "mean_all_tokens", "extract_visual_embedding_batch: .mean(dim=1)"),
    ("image.squash", 224, "Image.open(image_path).resize((224, 224)).convert('RGB')"),
    ("image.squash_resample", "bicubic", "Image.resize without resample: PIL's BICUBIC"),
    ("image.processor_kwargs", None, "dino_processor(images=images, ...): as shipped"),
    ("caption.model", "Salesforce/blip2-flan-t5-xl", "AutoModelForVision2Seq.from_pretrained"),
    ("caption.prompt", "", "blip_processor(images=images, ...): no text"),
    ("caption.keep_prompt", False, "no prompt to keep"),
    ("caption.max_new_tokens", 19, "model.generate(**inputs): max_length 20 incl. T5's start"),
    ("caption.num_beams", 1, "model.generate(**inputs): greedy"),
    ("caption.load_in_8bit", True, "BitsAndBytesConfig(load_in_8bit=True, threshold 6.0)"),
    ("caption.dtype", "fp16", "torch_dtype=torch.float16; .to(device, torch.float16)"),
    ("text.model", "bert-base-uncased", "AutoModel.from_pretrained('bert-base-uncased')"),
    ("text.pooling", "mean_unmasked_reference", "extract_text_embeddings_batch: .mean(dim=1)"),
    ("text.max_length", 512, "tokenizer(..., truncation=True): BERT's model_max_length"),
    ("run.batch_size", 64, "--batch-size default 64"),
    ("run.dtype", "fp32", "DINOv2 and BERT loaded without torch_dtype"),
    ("run.emb_dtype", "float32", ".cpu().detach().numpy().tolist() of fp32 outputs"),
]

# configs/prep/report_dinov2.yaml: main.py's DINOv2 row sees other features.
PREP_DINOV2 = [
    ("image.model", "facebook/dinov2-base", "model.py Dinov2: from_pretrained('.../dinov2-base')"),
    ("image.pooling", "cls+mean", "Dinov2ForImageClassification: cat([cls, patches.mean(1)])"),
    ("image.squash", 224, "data.py data_transforms_transformers: Resize((224, 224))"),
    ("image.squash_resample", "bilinear", "torchvision Resize's default interpolation"),
    (
        "image.processor_kwargs",
        {"do_resize": False, "do_center_crop": False},
        "data.py: ToTensor + Normalize(ImageNet) only, no crop",
    ),
    ("run.dtype", "fp32", "main.py: the model in fp32"),
]


def value_at(spec: dict, dotted: str):
    for key in dotted.split("."):
        spec = spec[key]
    return spec


@pytest.mark.parametrize("row", ROWS)
def test_report_configs_hold_the_reference_values(row):
    spec = yaml.safe_load((REPORT / f"{row}.yaml").read_text())
    for key, value, source in TRAINING + HEADS[row]:
        assert value_at(spec, key) == value, f"{row}: {key} (reference: {source})"
    # No early stop within the run: all 10 epochs, as in the reference.
    assert spec["early_stopping"]["patience"] >= spec["trainer"]["max_epochs"]
    assert spec["runs_root"] == "runs/report"  # apart from our recipe's runs/<name>


def test_only_configs_that_reproduce_table_1_say_so():
    for path in [*REPO.glob("configs/*.yaml"), *REPORT.glob("*.yaml")]:
        header = path.read_text().splitlines()[0]
        claims = header.startswith("# Report Table 1")
        assert claims == (path.parent == REPORT and path.stem in TABLE_1), path


@pytest.mark.parametrize(("config", "table"), [("report", PREP), ("report_dinov2", PREP_DINOV2)])
def test_prep_configs_hold_the_reference_values(config, table):
    _, plain = parse_config(["--config", str(REPO / "configs" / "prep" / f"{config}.yaml")])
    for key, value, source in table:
        assert value_at(plain, key) == value, f"{config}: {key} (reference: {source})"


def test_the_import_config_declares_the_reports_models():
    _, report = parse_config(["--config", str(REPO / "configs" / "prep" / "report.yaml")])
    path = REPO / "configs" / "prep" / "import_report_embeddings.yaml"
    _, imported = parse_config(["--config", str(path)])
    assert imported["input"]["kind"] == "report_embeddings"
    assert imported["input"]["dataset"] == "cuevascarlos/ImageNet-Sketch-Embed"
    assert imported["input"]["splits"] == {"train": "train", "val": "validation", "test": "test"}
    for section in ("image", "caption", "text"):
        assert imported[section] == report[section], section


# -- behaviour -------------------------------------------------------------------------------


def _cli(row: str, store: Path, tmp_path: Path, *extra: str, run: bool = False) -> FusionCLI:
    args = ["--config", str(REPORT / f"{row}.yaml"), "--data.store", str(store)]
    args += ["--runs_root", str(tmp_path / "runs"), *extra]
    return FusionCLI(args=(["fit", *args] if run else args), run=run)


@pytest.mark.parametrize("row", ROWS)
def test_report_configs_build_the_reference_trainer(row, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    store = small_store(tmp_path / "store", num_classes=6)
    cli = _cli(
        row,
        store,
        tmp_path,
        "--trainer.max_epochs",
        "1",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        run=True,
    )
    (opt,) = cli.trainer.optimizers
    assert type(opt) is torch.optim.SGD
    for group in opt.param_groups:  # alpha and beta included: one group, no weight decay
        assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.5, 0.0)
        assert (group["dampening"], group["nesterov"]) == (0, False)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(cli.model.parameters()))
    ckpt = cli.trainer.checkpoint_callback
    assert (ckpt.monitor, ckpt.mode) == ("val/loss", "min")
    assert cli.trainer.current_epoch == 1


def _reference_mlp(x, layers, dropout, training):
    """Linear -> ReLU -> Dropout -> Linear, as model.py's classifiers (eval: no dropout)."""
    first, last = layers
    h = F.dropout(F.relu(F.linear(x, first.weight, first.bias)), dropout, training)
    return F.linear(h, last.weight, last.bias)


def _linears(module) -> list[torch.nn.Linear]:
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize("row", ROWS)
def test_each_head_computes_the_reference_models_function(row, tmp_path):
    store = small_store(tmp_path / "store", num_classes=6)
    head = _cli(row, store, tmp_path).model.head.eval()
    torch.manual_seed(0)
    image, text = torch.randn(5, 16), torch.randn(5, 12)
    lin = _linears(head)
    if row == "dinov2":  # Dinov2ForImageClassification's classifier on the pooled features
        (only,) = lin
        expected = F.linear(image, only.weight, only.bias)
    elif row == "concat":  # MultiEmbeddingsClassifier
        expected = _reference_mlp(torch.cat([image, text], -1), lin, 0.2, False)
    elif row == "fusion":  # FusionClassifier: projections, concat, fusion_proj, ReLU, classifier
        v, t, fuse, cls = lin
        both = torch.cat([F.linear(image, v.weight, v.bias), F.linear(text, t.weight, t.bias)], -1)
        expected = _reference_mlp(both, [fuse, cls], 0.2, False)
        assert (v.out_features, t.out_features, fuse.out_features) == (512, 512, 512)
    else:  # DoubleModel: weight_layer (init 0.5, 0.5) over stack([visual, textual], -1)
        with torch.no_grad():
            head.weights.copy_(torch.tensor([0.8, -0.1]))
        w = head.weights.detach()
        stacked = torch.stack(
            [_reference_mlp(image, lin[:2], 0.2, False), _reference_mlp(text, lin[2:], 0.2, False)],
            dim=-1,
        )
        expected = stacked @ w
        lam = {"dual_logit_l0.1": 0.1, "dual_logit_l0.3": 0.3}[row]
        # regularization_loss: sum |min(w, 0)| + |sum(w) - 1|, times lambda in the loss
        reg = torch.clamp(w, max=0).abs().sum() + (w.sum() - 1).abs()
        torch.testing.assert_close(head.aux_loss().detach(), lam * reg)
    with torch.no_grad():
        torch.testing.assert_close(head(image, text), expected)
    if row.startswith("dual"):
        fresh = _cli(row, store, tmp_path).model.head
        torch.testing.assert_close(fresh.weights.detach(), torch.tensor([0.5, 0.5]))


def test_dinov2_row_features_are_what_dinov2_for_image_classification_reads():
    from transformers import Dinov2Config, Dinov2ForImageClassification

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
        num_labels=7,
    )
    model = Dinov2ForImageClassification(config).eval()
    pixels = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        tokens = model.dinov2(pixel_values=pixels).last_hidden_state
        features = pool_tokens(tokens, "cls+mean")
        torch.testing.assert_close(model.classifier(features), model(pixel_values=pixels).logits)


SKETCH = Image.new("RGB", (90, 50), "white")
for _x in range(0, 90, 7):
    SKETCH.putpixel((_x, (_x * 3) % 50), (0, 0, 0))


def test_report_squash_then_the_processor_then_mean_of_all_tokens(tiny_models):  # noqa: F811
    from transformers import AutoImageProcessor, AutoModel

    path = str(tiny_models["dinov2"])
    cfg = ImageConfig(model=path, pooling="mean_all_tokens", squash=224)
    pixels = ImagePreprocessor(cfg)([SKETCH])
    # dataset_generation.py: Image.open(p).resize((224, 224)), then the processor as shipped
    reference = AutoImageProcessor.from_pretrained(path)(
        images=[SKETCH.resize((224, 224))], return_tensors="pt"
    )["pixel_values"]
    torch.testing.assert_close(pixels, reference)
    encoder = ImageEncoder(cfg, dtype=torch.float32)
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(path)(pixel_values=reference).last_hidden_state
        torch.testing.assert_close(encoder(pixels), hidden.mean(dim=1))  # CLS included
    assert encoder.dim == hidden.shape[-1]


def test_dinov2_row_preprocessing_is_torchvisions_resize_to_tensor_normalize(tiny_models):  # noqa: F811
    from torchvision import transforms

    cfg = ImageConfig(
        model=str(tiny_models["dinov2"]),
        pooling="cls+mean",
        squash=56,
        squash_resample="bilinear",
        processor_kwargs={"do_resize": False, "do_center_crop": False},
    )
    ours = ImagePreprocessor(cfg)([SKETCH])
    # data.py data_transforms_transformers, at the tiny model's size
    reference = transforms.Compose(
        [
            transforms.Resize((56, 56)),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )(SKETCH)
    torch.testing.assert_close(ours[0], reference, atol=1e-5, rtol=0)


def test_unmasked_reference_mean_is_the_references_and_depends_on_the_batch(tiny_models):  # noqa: F811
    from transformers import AutoModel, AutoTokenizer

    path = str(tiny_models["bert"])
    captions = ["a dog", "a drawing of a large cat sitting on a wooden chair"]
    enc = TextEncoder(
        TextConfig(model=path, pooling="mean_unmasked_reference", max_length=512),
        dtype=torch.float32,
    )
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        batch = tok(captions, return_tensors="pt", padding=True, truncation=True)
        hidden = model(**batch).last_hidden_state
        torch.testing.assert_close(enc.encode(captions), hidden.mean(dim=1))
        alone = enc.encode(captions[:1])
        # The short caption's embedding changes with the batch (padding averaged in) ...
        assert not torch.allclose(alone[0], enc.encode(captions)[0], atol=1e-4)
        # ... which our default masked mean does not do.
        torch.testing.assert_close(masked_mean(hidden, batch["attention_mask"])[0], alone[0])


def test_19_new_tokens_is_the_references_max_length_20_for_flan_t5():
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        T5Config,
    )

    torch.manual_seed(0)
    small = {
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "initializer_range": 0.5,
    }
    config = Blip2Config(
        vision_config=Blip2VisionConfig(hidden_size=32, image_size=32, patch_size=8, **small),
        qformer_config=Blip2QFormerConfig(
            hidden_size=32, encoder_hidden_size=32, vocab_size=100, **small
        ),
        text_config=T5Config(
            vocab_size=100,
            d_model=32,
            d_kv=16,
            d_ff=64,
            num_layers=1,
            num_heads=2,
            initializer_factor=5.0,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=0,
        ),
        num_query_tokens=4,
        image_token_index=99,
    )
    model = Blip2ForConditionalGeneration(config).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        # transformers 4.45.2 (the reference's pin) ran generate() with max_length 20, which
        # for an encoder-decoder counts the decoder start token: 19 new tokens at most.
        reference = model.generate(pixel_values=pixels, max_length=20)
        ours = model.generate(pixel_values=pixels, max_new_tokens=19, num_beams=1, do_sample=False)
    assert torch.equal(ours, reference)
    assert reference.shape[1] == 20  # the random tiny model never stops early: the cap bites


def test_eight_bit_config_is_the_references(monkeypatch):
    import importlib.util

    from data_prep import captioner

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: object() if n == "bitsandbytes" else real(n, *a)
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    q = captioner._eight_bit_kwargs()["quantization_config"]
    assert q.load_in_8bit and not q.load_in_4bit
    assert q.llm_int8_threshold == 6.0 and q.llm_int8_skip_modules is None


def test_report_extraction_options_reach_the_store_and_its_fingerprint(tiny_models, tmp_path):  # noqa: F811
    import json

    import data_prep
    from data_prep.store import StoreMixError
    from feature_store import load_arrays, open_store
    from tests.fixtures_extraction import draw_kaggle_tree, prep_argv

    root = draw_kaggle_tree(tmp_path / "data", train=2, val=1, test=2, bad_images=False)
    report = [
        "--image.pooling",
        "mean_all_tokens",
        "--image.squash",
        "56",
        "--text.pooling",
        "mean_unmasked_reference",
        "--caption.dtype",
        "bf16",
    ]
    store = data_prep.main(prep_argv(root, tiny_models, tmp_path / "store", *report))
    models = open_store(store).manifest["models"]
    assert models["image"]["pooling"] == "mean_all_tokens"
    assert models["image"]["preprocessing"]["squash"] == {"size": 56, "resample": "bicubic"}
    assert models["text"]["pooling"] == "mean_unmasked_reference"
    # The captioner in its own dtype, the encoders in run.dtype (the reference: fp16 / fp32).
    assert (models["caption"]["dtype"], models["image"]["dtype"]) == ("bfloat16", "float32")
    assert load_arrays(store, "train").image_emb.shape[1] == models["image"]["dim"]
    fingerprint = json.loads((store / "_prep" / "fingerprint.json").read_text())["config"]
    assert fingerprint["image"]["squash"] == 56 and fingerprint["caption"]["dtype"] == "bf16"
    with pytest.raises(StoreMixError, match="image.squash"):
        data_prep.main(prep_argv(root, tiny_models, store, *report[:-2], "--image.squash", "64"))


def test_unset_new_options_leave_the_fingerprint_as_before():
    # A store begun before squash / processor_kwargs / caption.dtype existed still resumes.
    from types import SimpleNamespace

    from data_prep.config import PrepConfig
    from data_prep.pipeline import config_fingerprint

    listing = SimpleNamespace(splits={}, class_names=[])
    fp = config_fingerprint(PrepConfig(), listing)
    assert not {"squash", "squash_resample", "processor_kwargs"} & set(fp["image"])
    assert "dtype" not in fp["caption"]
    cfg = PrepConfig()
    cfg.image.squash = 224
    assert config_fingerprint(cfg, listing)["image"]["squash_resample"] == "bicubic"
