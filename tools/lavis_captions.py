"""Caption a Kaggle image tree with LAVIS BLIP-2 and write captions.csv (id,caption).

Optional: data_prep's own captioner (transformers' Blip2ForConditionalGeneration, which is
also what the report used: Salesforce/blip2-flan-t5-xl, no prompt, 8-bit) is the
recommended path. This is for LAVIS's own checkpoints or to compare with LAVIS captions.
Runs in its OWN environment (Python 3.10/3.11, requirements-lavis.txt; see docs/lavis.md),
never in the project's: LAVIS pins transformers<4.27 and timm==0.4.12. LAVIS downloads
bert-base-uncased, the language model and two .pth files when the model loads; pre-place
them as docs/lavis.md says to run offline.

$ .venv-lavis/bin/python tools/lavis_captions.py --root data/mva-recvis-2024 \
      --out data/captions.csv --model blip2_opt --type pretrain_opt2.7b --prompt "a sketch of"
$ .venv-lavis/bin/python tools/lavis_captions.py --root data/mva-recvis-2024 \
      --out data/captions.csv --model blip2_t5 --type pretrain_flant5xl --prompt ""

Ids are file names without extension, exactly as data_prep makes them; a file PIL cannot
open gets an empty caption (data_prep counts empty captions and will skip the image anyway).
Deliberately standalone: nothing from this project is imported.
"""

import argparse
import csv
import os

import torch
from lavis.models import load_model_and_preprocess
from PIL import Image

EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def images(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(EXTS) and not name.startswith("."):
                yield os.path.splitext(name)[0], os.path.join(dirpath, name)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="blip2_opt")
    p.add_argument("--type", default="pretrain_opt2.7b")
    p.add_argument("--prompt", default="a sketch of")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--beams", type=int, default=1)
    args = p.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, vis, _ = load_model_and_preprocess(args.model, args.type, is_eval=True, device=device)
    todo = list(images(args.root))
    seen = set()
    with open(args.out, "w", newline="", encoding="utf-8") as f, torch.inference_mode():
        out = csv.writer(f)
        out.writerow(["id", "caption"])
        for i in range(0, len(todo), args.batch_size):
            batch, ids = [], []
            for id_, path in todo[i : i + args.batch_size]:
                if id_ in seen:
                    raise SystemExit(f"duplicate id {id_!r} ({path}): ids must be unique")
                seen.add(id_)
                try:
                    batch.append(vis["eval"](Image.open(path).convert("RGB")))
                    ids.append(id_)
                except Exception:  # an unreadable file: empty caption, counted downstream
                    out.writerow([id_, ""])
            if not batch:
                continue
            caps = model.generate(
                {"image": torch.stack(batch).to(device), "prompt": args.prompt},
                max_length=args.max_len,
                num_beams=args.beams,
            )
            # LAVIS returns the continuation only; store "prompt + continuation" as
            # data_prep does with caption.keep_prompt: true.
            out.writerows(
                [id_, f"{args.prompt} {c.strip()}".strip()]
                for id_, c in zip(ids, caps, strict=True)
            )
            print(f"{min(i + args.batch_size, len(todo))}/{len(todo)}", end="\r", flush=True)


if __name__ == "__main__":
    main()
