"""DINOv2 patch view: the first three PCA components of patch tokens, shown as RGB.

$ python -m analysis --store STORE --out report --patch_images 4

The one place analysis runs a foundation model again, for a handful of images only: the
store's image model (manifest ``models["image"]``) is loaded with transformers'
AutoModel/AutoImageProcessor. PCA is fitted jointly on all shown images' patches, so a
colour means the same direction in every panel (the foreground/background split of the
DINOv2 paper's figure). Skipped with a note when the model or the images cannot be opened.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from sklearn.decomposition import PCA

from analysis.style import MIN_TEXT_PT
from analysis.text_encoder import model_ref
from feature_store.thumbs import resolve


def _pick_images(views, n: int, *, tries: int = 200) -> list[tuple[str, str]]:
    """Up to n (file, class) pairs whose path opens: one per class first, classes spread.

    Val first, then train; gives up after ``tries`` paths that do not open (a store built
    on another machine would otherwise cost a file check per row).
    """
    picked: dict[str, str] = {}
    failed = 0
    for split in (views.val, views.train):
        if split is None or len(split) == 0:
            continue
        by_class = np.argsort(split.labels, kind="stable")
        sorted_labels = split.labels[by_class]
        rank = np.empty(len(split), dtype=np.int64)
        rank[by_class] = np.arange(len(split)) - np.searchsorted(sorted_labels, sorted_labels)
        # rank 0 of every class before rank 1; classes in a golden-ratio shuffle
        for i in np.lexsort((split.labels * 0.618034 % 1.0, rank)):
            file = resolve(split.paths[i], views.info.root)
            if file is None:
                failed += 1
                if failed >= tries:
                    return list(picked.items())
                continue
            picked.setdefault(str(file), views.class_names[int(split.labels[i])])
            if len(picked) >= n:
                return list(picked.items())
    return list(picked.items())


def patch_pca_maps(model, processor, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(images [B, h, w, 3] in [0, 1] as the model saw them, maps [B, gh, gw, 3] in [0, 1])."""
    import torch

    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(im.convert("RGB"))
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        hidden = model(pixel_values=pixel_values).last_hidden_state
    patch = int(model.config.patch_size)
    gh, gw = pixel_values.shape[2] // patch, pixel_values.shape[3] // patch
    # Patch tokens are the last gh*gw tokens, after CLS (and any register tokens).
    tokens = hidden[:, -gh * gw :, :].float().numpy()
    b, t, d = tokens.shape
    comps = PCA(n_components=3).fit_transform(tokens.reshape(b * t, d))
    lo, hi = np.percentile(comps, 1, axis=0), np.percentile(comps, 99, axis=0)
    comps = np.clip((comps - lo) / np.maximum(hi - lo, 1e-8), 0.0, 1.0)
    mean = np.asarray(getattr(processor, "image_mean", [0.5] * 3)).reshape(1, 3, 1, 1)
    std = np.asarray(getattr(processor, "image_std", [0.5] * 3)).reshape(1, 3, 1, 1)
    seen = np.clip(pixel_values.numpy() * std + mean, 0.0, 1.0).transpose(0, 2, 3, 1)
    return seen, comps.reshape(b, gh, gw, 3)


def add_patch_view(report, views, *, n_images: int) -> None:
    sec = report.section("DINOv2 patch view")
    entry = views.info.manifest.get("models", {}).get("image")
    ref = model_ref(entry)
    if n_images <= 0:
        sec.note("Patch view disabled (--patch_images 0).")
        return
    if ref is None:
        sec.note("Skipped: the manifest records no image model (models['image']).")
        return
    library = entry.get("library", "transformers") if isinstance(entry, dict) else "transformers"
    if library != "transformers":
        sec.note(
            f"Skipped: the patch view loads transformers models; {ref!r} is a {library} model."
        )
        return
    picked = _pick_images(views, n_images)
    if not picked:
        sec.note("Skipped: none of the store's paths opens as an image file on this machine.")
        return
    try:
        from transformers import AutoImageProcessor, AutoModel

        from data_prep.loading import hf_progress_bars_off

        with hf_progress_bars_off():  # no "Loading weights" bar in the report's output
            processor = AutoImageProcessor.from_pretrained(ref)
            model = AutoModel.from_pretrained(ref).eval()
        seen, maps = patch_pca_maps(model, processor, [f for f, _ in picked])
    except Exception as err:  # any load/forward failure: skip the section, say why
        sec.note(f"Skipped: image model {ref!r} could not be loaded or run ({err}).")
        return
    fig, axes = plt.subplots(2, len(picked), figsize=(2.6 * len(picked), 5.4), squeeze=False)
    for i, (_, cls) in enumerate(picked):
        axes[0, i].imshow(seen[i])
        axes[0, i].set_title(cls, fontsize=MIN_TEXT_PT)
        axes[1, i].imshow(maps[i], interpolation="nearest")
        for ax in axes[:, i]:
            ax.set_axis_off()
    fig.tight_layout()
    sec.text(f"Model {ref}; {maps.shape[1]}x{maps.shape[2]} patches per image.")
    sec.figure("patch_pca", fig, "Top: input as the model sees it. Bottom: patch PCA as RGB.")
