"""Builds the `electra` command line from plain typed functions (see electra.commands).

A function's signature becomes its flags (keyword-only parameters) and positional arguments
(the others); its docstring's first paragraph becomes the help and its `Args:` section the help
of each flag. A trailing underscore is dropped from flag names (`json_` -> `--json`).
"""

from __future__ import annotations

import argparse
import errno
import inspect
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path

from electra.errors import Interrupted, UserError


def _doc(fn: Callable) -> tuple[str, str, dict[str, str]]:
    """(summary, description, {param: help}) from a Google-style docstring."""
    doc = inspect.getdoc(fn) or ""
    head, _, args = doc.partition("\nArgs:\n")
    helps: dict[str, str] = {}
    name = None
    for line in args.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if line.startswith("    ") and not line.startswith("     ") and ":" in stripped:
            name, text = stripped.split(":", 1)
            helps[name.strip()] = text.strip()
        elif name:
            helps[name] += " " + stripped
    summary = head.strip().split("\n\n")[0].replace("\n", " ")
    return summary, head.strip(), helps


def _add_param(parser: argparse.ArgumentParser, p: inspect.Parameter, hint, help_text: str) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    help_text = help_text.replace("%", "%%")  # argparse %-formats help strings
    kw: dict = {"help": help_text}
    positional = p.kind is not inspect.Parameter.KEYWORD_ONLY
    flag = "--" + p.name.rstrip("_").replace("_", "-")
    if hint is bool:
        if p.default is True or p.default is None:  # None: not given, so a YAML setting holds
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["action"] = "store_true"
        parser.add_argument(flag, dest=p.name, default=p.default, **kw)
        return
    if origin is list:
        kw["nargs"] = "+"
        kw["type"] = args[0]
    elif origin is typing.Literal:
        kw["choices"] = list(args)
        kw["type"] = type(args[0])
    else:
        kw["type"] = hint
    if kw.get("type") in (str, Path) and "choices" not in kw:
        kw["metavar"] = p.name.rstrip("_").upper()
    if positional:
        if p.default is not inspect.Parameter.empty:
            kw["nargs"] = "?"
            kw["default"] = p.default
        parser.add_argument(p.name, **kw)
    elif p.default is inspect.Parameter.empty:
        parser.add_argument(flag, dest=p.name, required=True, **kw)
    else:
        if p.default is not None and p.default is not False:
            kw["help"] = f"{help_text} (default: {p.default})"
        parser.add_argument(flag, dest=p.name, default=p.default, **kw)


def computes(fn: Callable) -> Callable:
    """Marks a command that runs a model: it gets --threads."""
    fn.computes = True
    return fn


def add_command(subparsers, name: str, fn: Callable, common: argparse.ArgumentParser) -> None:
    summary, description, helps = _doc(fn)
    parser = subparsers.add_parser(name, help=summary, description=description, parents=[common],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(fn)
    for p in inspect.signature(fn).parameters.values():
        _add_param(parser, p, hints[p.name], helps.get(p.name, ""))
    if getattr(fn, "computes", False):
        parser.add_argument("--threads", type=int, default=None, metavar="N",
                            help="CPU threads for PyTorch (default: the CPUs this process may use, at most the "
                                 "cgroup quota, shared between torchrun's processes on the node; or OMP_NUM_THREADS)")
    parser.set_defaults(_fn=fn)


def build_parser(commands: dict[str, Callable | dict[str, Callable]]) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback when something fails")
    parser = argparse.ArgumentParser(
        prog="electra", parents=[common],
        description="Pretrain ELECTRA text encoders on your own text, then fine-tune, evaluate and use them.")
    sub = parser.add_subparsers(metavar="COMMAND")
    for name, fn in commands.items():
        if isinstance(fn, dict):  # a command group such as `electra tokenizer train`
            group = sub.add_parser(name, help=f"{name} commands: {', '.join(fn)}", parents=[common])
            group_sub = group.add_subparsers(metavar="SUBCOMMAND")
            for sub_name, sub_fn in fn.items():
                add_command(group_sub, sub_name, sub_fn, common)
            group.set_defaults(_help=group)
        else:
            add_command(sub, name, fn, common)
    parser.set_defaults(_help=parser)
    return parser


def run(commands: dict, argv: list[str] | None = None) -> int:
    parser = build_parser(commands)
    args = vars(parser.parse_args(argv))
    debug = args.pop("debug", False)
    help_parser = args.pop("_help")
    fn = args.pop("_fn", None)
    if fn is None:
        help_parser.print_help()
        return 2
    threads = args.pop("threads", None)
    try:
        if getattr(fn, "computes", False):
            from electra.runtime import set_threads, warn_if_busy
            warn_if_busy(set_threads(threads))
        return int(fn(**args) or 0)
    except UserError as e:
        if debug:
            raise
        if os.environ.get("RANK", "0") in ("0", ""):  # under torchrun, rank 0 speaks for all
            print(f"electra: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # stopped by a signal after saving; the driver said what it kept
        return e.exit_code
    except KeyboardInterrupt:
        print("electra: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # noqa: BLE001 - one line for the user, the traceback behind --debug
        if debug:
            raise
        print(f"electra: error: {_one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, PermissionError) else 1


def _one_line(e: Exception) -> str:
    """What an unexpected failure says: the OS's own errors in words a user acts on, others by type."""
    if isinstance(e, PermissionError):
        return (f"permission denied: {e.filename or e}; choose a path you can read and write (or fix its "
                "permissions)")
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return (f"no space left on the device writing {e.filename or 'the output'}; free some space (what was "
                "already saved is kept)")
    return f"{type(e).__name__}: {e} (run again with --debug for the traceback)"
