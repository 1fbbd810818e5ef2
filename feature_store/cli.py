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
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from feature_store.compat import option_strings

EXIT_BAD_INPUT = 2


def error_name(prog: str) -> str:
    """``predict.py ensemble`` stays; ``python -m analysis`` -> ``analysis``."""
    return prog.removeprefix("python -m ")


def one_line(message: str) -> str:
    """A jsonargparse message on one line, its ``Parser key "x":`` as the option ``--x:``."""
    return " ".join(re.sub(r'Parser key "([^"]+)":', r"--\1:", message).split())


def option_names(parser: ArgumentParser) -> list[str]:
    """Every ``--long`` option string of ``parser`` (dotted ones included)."""
    return [s for s in option_strings(parser) if s.startswith("--")]


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

    def parse_args(self, args=None, *rest, **kwargs):
        """A ``-c`` YAML that is not UTF-8 is one line naming it (jsonargparse would raise
        a bare UnicodeDecodeError that names no file)."""
        argv = list(sys.argv[1:] if args is None else args)
        for i, arg in enumerate(argv):
            name, eq, value = arg.partition("=")
            if name in ("-c", "--config"):
                value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
                if value and Path(value).is_file():
                    try:
                        read_option_file(value, "--config", "a YAML file of these options")
                    except OptionFileError as err:
                        self.error(str(err))
        return super().parse_args(args, *rest, **kwargs)

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


class OptionFileError(ValueError):
    """A file given by an option cannot be read as text; the message names the fix."""


def read_option_file(path: str | os.PathLike, option: str, expected: str) -> str:
    """The text of the file an option names (``--input.captions_csv x.csv``), UTF-8 with or
    without a BOM. A missing file, a directory or another encoding (a Latin-1 export, say)
    raise :class:`OptionFileError` naming ``option``, the file and the fix; ``expected`` says
    what the file holds ("the id,caption CSV file")."""
    path = Path(path)
    if path.is_dir():
        raise OptionFileError(f"{option} {path} is a directory; give {expected}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise OptionFileError(f"{option} {path} does not exist; give {expected}") from None
    except OSError as err:
        raise OptionFileError(
            f"{option} {path} cannot be read ({err.strerror or err}); give {expected}"
        ) from None
    if b"\0" in data[:8192]:  # no text encoding has NUL bytes: an image, an .arrow shard...
        raise OptionFileError(f"{option} {path} is a binary file, not text; give {expected}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise OptionFileError(
            f"{option} {path} is not UTF-8 text: byte 0x{data[err.start]:02x} at line {line}, "
            f"column {column} (byte {err.start} of the file). Save it as UTF-8, e.g. iconv -f "
            f"latin1 -t utf-8 {path} > {path.with_suffix('.utf8' + path.suffix).name}, and "
            "pass that file"
        ) from None
