"""$ python -m data_prep --config configs/prep/<name>.yaml [--section.key value ...]"""

import sys

from data_prep import main


def _cli() -> int:
    from data_prep.loading import ModelLoadError
    from data_prep.store import StoreMixError

    expected = (ModelLoadError, StoreMixError, ValueError, FileNotFoundError)
    try:
        main()
    except expected as err:  # InputLayoutError and BadImageError are ValueErrors too
        # A user error: the message says what to fix; a traceback would only hide it.
        print(f"data_prep: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
