"""The command-line convention of every stage (LightningCLI's), with one-line errors.

$ python predict.py -c predict.yaml --batch_size 1024        # a YAML, then overrides
$ python -m analysis --store STORE --out report --probe_train 0 --print_config

``--config/-c`` reads a YAML of the options, option names are dotted and underscored
(``--run.out``, ``--probe_train``) and ``--print_config`` prints a complete config, as in
``train.py``. Bad input or usage exits 2 with one line ``NAME: error: ...`` naming the
option; an internal error exits 1 with its traceback (Python's own behaviour).
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Mapping, Sequence

from jsonargparse import ActionConfigFile, ArgumentParser

EXIT_BAD_INPUT = 2


def error_name(prog: str) -> str:
    """``predict.py ensemble`` stays; ``python -m analysis`` -> ``analysis``."""
    return prog.removeprefix("python -m ")


def one_line(message: str) -> str:
    """A jsonargparse message on one line, its ``Parser key "x":`` as the option ``--x:``."""
    return " ".join(re.sub(r'Parser key "([^"]+)":', r"--\1:", message).split())


def option_names(parser: ArgumentParser) -> list[str]:
    """Every ``--long`` option string of ``parser`` (dotted ones included)."""
    return [s for a in parser._actions for s in a.option_strings if s.startswith("--")]


def unknown_option(message: str, parser: ArgumentParser) -> str | None:
    """``unknown option --model.droput; did you mean --model.dropout?`` for jsonargparse's
    ``unrecognized arguments: --model.droput 0.3``, the nearest of ``parser``'s option names
    by difflib's ratio; None for any other message."""
    found = re.search(r"unrecognized arguments: (\S+)", message)
    option = found.group(1).split("=")[0] if found else ""
    if not option.startswith("-"):  # a stray value, not an option: jsonargparse's words
        return None
    close = difflib.get_close_matches(option, option_names(parser), n=1)
    if close:
        return f"unknown option {option}; did you mean {close[0]}?"
    return f"unknown option {option} (options: {parser.prog} --help)"


class CliParser(ArgumentParser):
    """jsonargparse's parser whose usage errors are one stderr line and exit code 2."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # a caller that handles ArgumentError itself
            return super().error(message, ex)
        line = unknown_option(message, getattr(ex, "subcommand_parser", None) or self)
        line = line or f"{one_line(message)} (options: {self.prog} --help)"
        print(f"{error_name(self.prog)}: error: {line}", file=sys.stderr, flush=True)
        self.exit(EXIT_BAD_INPUT)


def cli_parser(prog: str, description: str) -> CliParser:
    """A parser with ``--config/-c`` (a YAML of these options) and ``--print_config``."""
    parser = CliParser(prog=prog, description=description, default_env=False)
    parser.add_argument(
        "--config", "-c", action=ActionConfigFile, help="a YAML file of these options"
    )
    return parser


def renamed_options(argv: Sequence[str], renames: Mapping[str, str], prog: str) -> list[str]:
    """``argv`` with deprecated option spellings replaced, and a note for each on stderr."""
    out = []
    for arg in argv:
        old, eq, value = arg.partition("=")
        new = renames.get(old)
        if new is not None:
            print(f"{error_name(prog)}: note: {old} is deprecated; use {new}", file=sys.stderr)
            arg = new + eq + value
        out.append(arg)
    return out
