"""The command layer: each subcommand's options, its ``main``, and its exit codes.

$ python train.py probe --help          # fusion/commands/probe.py
$ python predict.py --help              # fusion/commands/predict.py

A command parses its arguments, calls the library (``fusion.predict``, ``fusion.ensemble``,
``fusion.stacking``, ``fusion.probe_run``, ``fusion.runs``...), and runs inside
:func:`fusion.exit.exit_codes`, the one place where the library's typed errors
(fusion/errors.py) become one line and an exit code: 2 bad input, 1 internal, 143 SIGTERM,
130 Ctrl-C. Library modules import nothing from here.

- :mod:`fusion.commands.predict`: ``predict.py`` (and ``predict.py ensemble``);
- :mod:`fusion.commands.ensemble`: ``predict.py ensemble``;
- :mod:`fusion.commands.probe`: ``train.py probe``;
- :mod:`fusion.commands.stack`: ``train.py stack``;
- :mod:`fusion.commands.cv`, :mod:`fusion.commands.tune`: ``train.py cv`` and ``tune``,
  whose own options their parser takes (:func:`fusion.command_options.parse_own_options`);
  every other argument goes to the fits' LightningCLI (``fusion.cli.main(args)``), whose
  experiment name (:func:`fusion.runs.experiment_name`) names their directories too.

Every command's parser is a jsonargparse one (``parser()`` in each module; LightningCLI's
for fit/validate/test/predict), so ``--help`` lists each option with its default
(tests/test_command_parsers.py).

``train.py fit/validate/test/predict`` is LightningCLI's, in :mod:`fusion.cli`, the command
layer's too; ``train.py`` maps its errors with the same :func:`fusion.exit.exit_codes`.
:mod:`fusion.command_options` holds the options they share (``--category``, ``--kaggle``,
``--wandb.*``), below both.
"""
