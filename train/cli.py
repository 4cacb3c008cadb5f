"""What every entry point's command line shares: `--help` that shows each option's default, and a
config error said in one line instead of a traceback.

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ...
    if __name__ == "__main__":
        with config_errors_exit():
            main(parse_args())
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from train.config import ConfigError, config_help, config_to_yaml, load_config


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's and epilog's line breaks, and ends each option's help with its default,
    unless the help already says it or there is none to say (None, or a flag that is off)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.default == []:
            return text
        return super()._get_help_string(action)


@contextlib.contextmanager
def config_errors_exit():
    """A ConfigError (a wrong key or value, from the file, an override, or a check made while the run
    is set up) becomes one line on stderr and exit status 2, argparse's for a bad command line. A checkpoint
    that could not be written (checkpoint.on_error=stop) is said the same way, with status 1: its message
    names the folder, the error, the space needed and the checkpoint that is intact."""
    from train.checkpoint import CheckpointWriteError

    try:
        yield
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except CheckpointWriteError as err:
        print(f"checkpoint error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


def recipe_parser(doc: str, schema: type, default_config: str | None, example: str) -> argparse.ArgumentParser:
    """A training recipe's command line: --config (required without a default), --print-config, and
    key=value overrides; --help ends with every config key of `schema` and its default."""
    parser = argparse.ArgumentParser(description=doc, epilog=config_help(schema), formatter_class=HelpFormatter)
    if default_config is None:
        parser.add_argument("--config", required=True, help="the experiment's YAML file")
    else:
        shown = os.path.relpath(default_config, Path(__file__).resolve().parents[1])  # the repository's
        parser.add_argument("--config", default=default_config, help=f"the experiment's YAML file (default: {shown})")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (every key, after defaults, file and overrides) and exit")
    parser.add_argument("overrides", nargs="*", help=f"key=value, e.g. {example}; the keys are listed below")
    return parser


def recipe_config(parser: argparse.ArgumentParser, schema: type, argv: list[str] | None = None):
    """The resolved config of a recipe's command line; with --print-config, print it and exit 0."""
    args = parser.parse_args(argv)
    cfg = load_config(schema, args.config, args.overrides)
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        raise SystemExit(0)
    return cfg
