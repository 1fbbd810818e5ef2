"""Late fusion by stacking: separately trained heads pooled on held-out rows, cross-fitted.

$ python train.py stack --checkpoint runs/visual_only/A/checkpoints/best.ckpt \\
      --checkpoint runs/text_only/B/checkpoints/best.ckpt --data.store stores/kaggle

``train.py stack`` is the one command that combines models; members are loaded, aligned
and pooled by :func:`fusion.combine.combine` (``predict.py ensemble`` and ``predict.py
--checkpoint A --checkpoint B`` are its aliases). Each member's log-probabilities are pooled
as ``z = sum_m w_m(x) * log p_m(x)``, with non-negative weights that also set the
temperature (:class:`Stacker`); ``--stack.method``:

- ``logistic`` (the default, fusion/combine.py says why): a small logistic stacker gives each
  row its own weights from the members' confidence on that row (max probability, entropy,
  top-2 margin), so a row whose caption says nothing can lean on the image head and a row
  whose caption names the class on the text head;
- ``weights``: one weight per member, the same for every row;
- ``mean``: the members' probabilities averaged, nothing fitted.

``logistic`` and ``weights`` are fitted by minimising the negative log-likelihood of
labelled rows the members did not train on (L-BFGS, a few dozen parameters):

- ``--checkpoint`` members (``train.py fit`` runs): the val split. Cheap, but val is small
  (a few hundred rows on a small store), and a stacker fitted on it can lean on a member's
  chance agreement with val labels. A ``train.py cv`` fold's checkpoint is refused (it
  trained on the val rows): pass its directory with ``--cv``;
- ``--cv`` members (``train.py cv`` directories): every train+val row's out-of-fold
  probabilities, several times more rows, and the test probabilities averaged over the
  folds. On the bench stores this kept neutral-caption rows level with ``visual_only``
  where the val-fitted stack lost up to 2.5 points (bench/README.md);
- ``--probs`` members (saved ``.probs.npz`` test probabilities), each with its own labelled
  ``--fit_on`` file (``RUN/val.probs.npz``, ``CV/oof.probs.npz``), in ``--probs`` order.

Members may be mixed: the stack is fitted on the rows every member holds out (a
checkpoint's val rows are among a CV's out-of-fold rows, so a mix is fitted on val).
The accuracy reported is cross-fitted: the fitted rows are cut into ``folds`` stratified
folds and every row is scored by a stacker fitted on the other folds, never on itself.
The submission uses the stacker fitted on all of them. Writes a run directory::

    stack.json              members, method, rows fitted on, fitted weights, cross-fitted
                            top-1 of the stack and of each member alone on those rows
    val_predictions.csv     id,label,pred,confidence (cross-fitted); oof_predictions.csv
                            when every member's rows are out of fold (--cv)
    submission.csv          Id,Category on the test split (--category index|name), with
                            submission.probs.npz and submission.json; --kaggle sends it
    wandb/                  the W&B run, candidate "stack": best/val/acc_top1 (--checkpoint)
                            or best/oof/acc_top1 (--cv), cross-fitted; the submission

$ python train.py cv --config configs/visual_only.yaml --data.folds 5 --data.store S
$ python train.py cv --config configs/text_only.yaml --data.folds 5 --data.store S
$ python train.py stack --cv runs/visual_only/cv5 --cv runs/text_only/cv5
"""

from __future__ import annotations

from pathlib import Path

from fusion.ensemble import load_probs
from fusion.heads import checkpoint_set_dims
from fusion.predict import load_checkpoint


def cv_fold_of(checkpoint: str | Path) -> tuple[Path, int] | None:
    """``(CV directory, K)`` when ``checkpoint`` is a ``train.py cv`` fold's, else None.

    A fold trains on train+val less one fold, so the val split holds rows it trained on.
    Its run's ``config.yaml`` says so (``data.folds``)."""
    import yaml

    ckpt = Path(checkpoint)
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    try:
        config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    data = config.get("data") if isinstance(config, dict) else None
    folds = data.get("folds") if isinstance(data, dict) else None
    return (run.parent, int(folds)) if isinstance(folds, int) and folds > 1 else None


def member_sets(member: str | Path) -> list[str]:
    """The feature sets a member reads: a checkpoint's, or a ``train.py cv`` directory's
    (its folds' ``data.features``; ``[image, text]`` when the config leaves it out)."""
    import yaml

    path = Path(member)
    if path.name.endswith(".npz"):  # saved probabilities: the sets of their checkpoints
        made_by = [c for c in load_probs(path).checkpoints if Path(c).is_file()]
        return list(dict.fromkeys(s for c in made_by for s in member_sets(c)))
    if path.is_file():
        return list(checkpoint_set_dims(load_checkpoint(path)["hyper_parameters"]))
    try:
        config = yaml.safe_load((path / "fold_0" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    data = config.get("data") if isinstance(config, dict) else None
    features = data.get("features") if isinstance(data, dict) else None
    return list(features) if features else ["image", "text"]
