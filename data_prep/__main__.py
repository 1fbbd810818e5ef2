"""$ python -m data_prep --config configs/prep/<name>.yaml [--section.key value ...]
$ python -m data_prep -c configs/prep/demo.yaml --run.out stores/x    # -c = --config

Exit codes: 0 done, 2 bad input or an unwritable output (one line says what to fix),
1 an internal error (a traceback), 143 stopped by SIGTERM after the shard in progress
(rerun the same command to continue).
"""

import sys

EXIT_SIGTERM = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


def _error(message: str) -> int:
    print(f"data_prep: error: {message}", file=sys.stderr)
    return 2


def _cli(argv: list[str] | None = None) -> int:
    from data_prep.config import parse_config

    try:  # before torch is imported, so --help and option errors answer at once
        cfg, plain = parse_config(argv)
    except ValueError as err:  # an impossible value: the message names the option
        return _error(str(err))

    from data_prep.extract import Interrupted
    from data_prep.loading import ModelLoadError
    from data_prep.pipeline import run
    from data_prep.store import StoreMixError

    expected = (ModelLoadError, StoreMixError, ValueError, FileNotFoundError)
    try:
        run(cfg, plain)
    except Interrupted as err:
        print(f"data_prep: {err}", file=sys.stderr)
        return EXIT_SIGTERM
    except expected as err:  # InputLayoutError and BadImageError are ValueErrors too
        # A user error: the message says what to fix; a traceback would only hide it.
        return _error(str(err))
    except OSError as err:  # a full disk, a read-only store directory mid-run
        return _error(
            f"writing the store failed: {err}. Free space or fix the directory (or choose "
            "another --run.out), then rerun the same command: finished shards are kept."
        )
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
