"""`rsttrace` command line: dispatches to one module per subcommand.

Each module in rsttrace/commands/ defines `register(subparsers)` (adds its
parser, with `set_defaults(run=...)`) and keeps its imports inside `run`, so
`rsttrace --help` and `rsttrace report` never import bcc or textual.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rsttrace.analysis.safe import SafeStream, printable

COMMANDS = ("live", "record", "doctor", "report", "demo", "fix", "export", "agent")

EPILOG = """\
examples:
  sudo rsttrace                          live screen of every reset, its cause and fix
  sudo rsttrace record -o incident.jsonl record resets, drops and context until Ctrl-C
  rsttrace report incident.jsonl -o resets.csv   postmortem CSV, one row per reset
  sudo rsttrace doctor                   what this kernel lets rsttrace see; config audit
  sudo rsttrace demo                     reproduce every root cause in a namespace lab
  sudo rsttrace --fix --dry-run          the fix plan for this node, changing nothing
"""


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rsttrace",
        description="Trace TCP connection resets live and explain each one: "
                    "conntrack full, timeout mismatch, keepalive, invalid, no listener, peer reset.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from rsttrace import __version__
    p.add_argument("--version", action="version", version=f"rsttrace {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"rsttrace.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"rsttrace.commands.{name}":
                continue  # command not built yet
            raise
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs one command with everything it prints going through the one
    sanitiser (analysis/safe.py): names, paths and values from the host or a
    recording reach the terminal as text, never as escape sequences."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = SafeStream(out), SafeStream(err)
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = out, err


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `rsttrace --fix ...` is an alias of `rsttrace fix ...`.
    if "--fix" in argv and (not argv or argv[0].startswith("-")):
        argv.remove("--fix")
        argv.insert(0, "fix")
    parser = build_parser()
    # No subcommand: the live screen (on a terminal), else the help.
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        if "live" in parser._subparsers._group_actions[0].choices and sys.stdout.isatty():  # type: ignore[union-attr]
            argv.insert(0, "live")
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0 if not argv else 2
    try:
        return int(args.run(args) or 0)
    except CLIError as e:
        # one line: a newline or a CR from a name in the message is shown, not obeyed
        print(f"rsttrace: {printable(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
