"""Write a Kaggle submission (Id,Category) from one or more trained fusion heads.

$ python predict.py --checkpoint runs/sets_weighted/RUN/checkpoints/best.ckpt \
      --store stores/kaggle --out submission.csv

$ python predict.py ensemble --probs A.probs.npz --probs B.probs.npz --out ens.csv

See ``fusion/commands/predict.py`` for the options (repeat ``--checkpoint`` to average runs)
and ``fusion/ensemble.py`` for ensembles of saved ``.probs.npz`` files.
"""

from fusion.commands.predict import main

if __name__ == "__main__":
    main()
