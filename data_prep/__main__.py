"""$ python -m data_prep --config configs/prep/<name>.yaml [--section.key value ...]

Exit codes: 0 done, 2 bad input or an unwritable output (one line says what to fix),
143 stopped by SIGTERM after the shard in progress (rerun the same command to continue).
"""

import sys

from data_prep import main

EXIT_SIGTERM = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


def _cli() -> int:
    from data_prep.extract import Interrupted
    from data_prep.loading import ModelLoadError
    from data_prep.store import StoreMixError

    expected = (ModelLoadError, StoreMixError, ValueError, FileNotFoundError)
    try:
        main()
    except Interrupted as err:
        print(f"data_prep: {err}", file=sys.stderr)
        return EXIT_SIGTERM
    except expected as err:  # InputLayoutError and BadImageError are ValueErrors too
        # A user error: the message says what to fix; a traceback would only hide it.
        print(f"data_prep: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only store directory mid-run
        print(
            f"data_prep: error: writing the store failed: {err}. Free space or fix the "
            "directory (or choose another --run.out), then rerun the same command: finished "
            "shards are kept.",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
