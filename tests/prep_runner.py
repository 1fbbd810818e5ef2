"""Run ``python -m data_prep`` with a pause in the shard writer, for kill/SIGTERM tests.

$ python -m tests.prep_runner --pause-after 2 -- --config configs/prep/demo.yaml
$ python -m tests.prep_runner --sleep-per-shard 0.5 -- --config configs/prep/demo.yaml

The pause lives here, in the tests, not in production code: this wrapper patches
``StoreWriter.write_shard`` and then runs data_prep's own command line in this process.
``--pause-after N`` stops still after N shards (as a hung job would) so a test can
``kill -9`` at a known point; ``--sleep-per-shard S`` slows each shard down so a signal
lands mid-run.
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pause-after", type=int, default=0)
    parser.add_argument("--sleep-per-shard", type=float, default=0.0)
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv

    from data_prep.store import StoreWriter

    original = StoreWriter.write_shard
    written = 0

    def write_shard(self, *a, **kw):
        nonlocal written
        original(self, *a, **kw)
        written += 1
        if args.pause_after and written >= args.pause_after:
            while True:  # wait here to be killed
                time.sleep(1)
        time.sleep(args.sleep_per_shard)

    StoreWriter.write_shard = write_shard
    sys.argv = ["python -m data_prep", *argv]
    from data_prep.__main__ import _cli

    return _cli()


if __name__ == "__main__":
    sys.exit(main())
