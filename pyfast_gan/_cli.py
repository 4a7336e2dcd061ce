"""What every pyfast_gan command line shares: an ArgumentParser whose errors are one line
(not the whole usage block) with a pointer to --help and exit code 2, and negative numbers
accepted as flag values (``--lr -1e-4`` reaches validation, which names the flag); and
:func:`flags_alone`, the trainer flags of a run that names its own switches."""
from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse's hook
        """One line, then exit 2: the usage block hides the line that matters."""
        self.exit(2, f"{self.prog}: error: {message}\n(see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        return super().parse_args(join_negative_values(self, sys.argv[1:] if args is None else list(args)),
                                  namespace)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def join_negative_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--flag -1e-4`` -> ``--flag=-1e-4`` for flags that take values: argparse reads a token
    that starts with '-' and is not a plain integer or decimal as an option, so a negative
    number in exponent form would be "expected one argument" instead of a clear message."""
    takes_value = {s for a in parser._actions if a.nargs in (None, "?") for s in a.option_strings}
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok in takes_value and i + 1 < len(argv) and argv[i + 1].startswith("-") and _is_number(argv[i + 1]):
            out.append(f"{tok}={argv[i + 1]}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def flags_alone(flags: list[str]) -> list[str]:
    """``flags`` with ``--no-fast`` in front unless they say ``--fast``: a trainer run (a study's,
    a benchmark row) that names its switches gets those and no others, whatever --fast auto would
    add on this machine."""
    return list(flags) if "--fast" in flags else ["--no-fast", *flags]
