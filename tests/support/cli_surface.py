"""The rdpo-fast command line's surface: every subcommand and, for each option, its flags, destination,
default, choices, nargs, type, whether it is required or hidden. tests/fixtures/cli_surface.json holds it
as it was before the package was regrouped (2026-12-06); `python tests/support/cli_surface.py FILE`
writes the current one."""
from __future__ import annotations

import argparse
import json
import sys


def surface(parser: argparse.ArgumentParser) -> dict:
    out = {}
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        opts = []
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            d = a.default
            try:
                json.dumps(d)
            except TypeError:
                d = repr(d)
            opts.append({"flags": list(a.option_strings), "dest": a.dest, "default": d,
                         "choices": None if a.choices is None else [str(c) for c in a.choices],
                         "nargs": a.nargs, "type": getattr(a.type, "__name__", None) if a.type else None,
                         "required": a.required, "hidden": a.help == argparse.SUPPRESS,
                         "action": type(a).__name__})
        out[name] = sorted(opts, key=lambda o: (o["dest"], o["flags"]))
    return json.loads(json.dumps(out))  # tuples as lists, as the fixture holds them


if __name__ == "__main__":
    from rdpo_fast.cli import build_parser

    with open(sys.argv[1], "w") as f:
        json.dump(surface(build_parser()), f, indent=1, sort_keys=True)
