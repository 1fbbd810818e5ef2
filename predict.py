"""Write a Kaggle submission (Id,Category) from one or more trained fusion heads.

$ python predict.py --checkpoint runs/dual_logit_l0.1/RUN/checkpoints/best.ckpt \
      --store stores/kaggle --out submission.csv
$ python predict.py ensemble --probs A.probs.npz --probs B.probs.npz --out ens.csv

See ``fusion/predict.py`` for the options (repeat ``--checkpoint`` to average runs) and
``fusion/ensemble.py`` for ensembles of saved ``.probs.npz`` files.
"""

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None):
    """``predict.py ensemble ...`` -> fusion.ensemble; anything else -> fusion.predict."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["ensemble"]:
        from fusion.ensemble import main as ensemble_main

        return ensemble_main(args[1:])
    from fusion.predict import main as predict_main

    return predict_main(args)


if __name__ == "__main__":
    main()
