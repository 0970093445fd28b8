"""Config dataclasses <-> command-line flags: every field becomes a flag (`grad_accum` ->
`--grad-accum`), its help read from the field's comments, so the CLI can't drift from the
code."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
import typing
from collections.abc import Mapping
from typing import Any, Literal

from llmlab.train.config import base_type, build, check_fields


def flag_name(name: str) -> str:
    """The flag of a config field: `grad_accum` -> `--grad-accum`."""
    return "--" + name.replace("_", "-")


# ----------------------------------------------------------------------------- field docs


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's documentation: `field(metadata={"help": ...})`, else its comments in the
    class source (the comment lines right above the field, then the one on its line).

    Comments keep the dataclasses readable; parsing them once here makes them the single
    source of the CLI's help too. Without source (a frozen build) help just has no meaning."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's comment wins over its base's
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        lines = src.splitlines()
        comments = {tok.start[0]: tok.string.lstrip("#").strip()
                    for tok in tokenize.generate_tokens(io.StringIO(src).readline)
                    if tok.type == tokenize.COMMENT}
        node = ast.parse(src).body[0]
        assert isinstance(node, ast.ClassDef)
        own_line = {n for n in comments if lines[n - 1].lstrip().startswith("#")}
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above: list[str] = []
            n = stmt.lineno - 1
            while n in own_line:
                above.insert(0, comments[n])
                n -= 1
            end = stmt.end_lineno or stmt.lineno
            after = [comments[n] for n in range(stmt.lineno, end + 1)
                     if n in comments and n not in own_line]
            text = " ".join(c for c in above + after if c)
            if text:
                docs[stmt.target.id] = text
    for f in dataclasses.fields(cls):
        if f.metadata.get("help"):
            docs[f.name] = f.metadata["help"]
    return docs


class Derived(str):
    """A default that is worked out at run time, shown as this text in --help."""


def show_default(v: Any) -> str:
    """How --help shows a default (the tests read it back the same way)."""
    if isinstance(v, Derived):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, str):
        return v if v else "''"
    return str(v)


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


# ----------------------------------------------------------------------------- flags


def _parser_for(tp: Any, optional: bool) -> Any:
    def parse(s: str) -> Any:
        if optional and s.lower() == "none":
            return None
        if tp is bool:
            if s.lower() in ("1", "true", "yes", "on"):
                return True
            if s.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")
        return tp(s)

    parse.__name__ = getattr(tp, "__name__", "value")  # argparse: "invalid int value: 'x'"
    return parse


def add_dataclass_args(p: argparse.ArgumentParser, cls: type, title: str,
                       skip: tuple[str, ...] = (), defaults: Mapping[str, Any] | None = None,
                       notes: Mapping[str, str] | None = None,
                       description: str | None = None) -> list[str]:
    """One flag per field, default None (= not given), so presets can fill the rest.

    Each flag's help is the field's documentation (`field_docs`), its allowed values and the
    default this command uses: `defaults` where the command overrides the dataclass's (SFT's
    training settings, a preset's), with `notes` saying when that default changes."""
    g = p.add_argument_group(title, description)
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    defaults, notes = defaults or {}, notes or {}
    names = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, optional = base_type(hints[f.name])
        if typing.get_origin(tp) in (dict, list) or tp in (dict, list):
            continue
        kw: dict[str, Any] = {"dest": f.name, "default": None}
        doc = docs.get(f.name, "").rstrip(".")
        if typing.get_origin(tp) is Literal:
            kw["choices"] = list(typing.get_args(tp))
            doc += ("; " if doc else "") + "one of: " + ", ".join(map(str, kw["choices"]))
        elif tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _parser_for(tp, optional)
            kw["metavar"] = getattr(tp, "__name__", "VALUE").upper()
            if optional:
                doc += ("; " if doc else "") + "none to unset"
        default = defaults.get(f.name, field_default(f))
        shown = "required" if default is dataclasses.MISSING else show_default(default)
        note = f"; {notes[f.name]}" if f.name in notes else ""
        # argparse %-formats help strings: a literal % in a comment must not break --help.
        kw["help"] = f"{doc} (default: {shown}{note})".replace("%", "%%")
        g.add_argument(flag_name(f.name), **kw)
        names.append(f.name)
    return names


def overrides(ns: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    return {n: getattr(ns, n) for n in names if getattr(ns, n, None) is not None}


def from_flags(cls: type, ns: argparse.Namespace, names: list[str], where: str,
               base: Mapping[str, Any] | None = None) -> Any:
    """`cls` from a command's `base` settings and the flags given, each flag's range checked
    under its own name (argparse has checked its type)."""
    given = overrides(ns, names)
    check_fields(cls, given, flag_name)
    return build(cls, {**(base or {}), **given}, where)


# ----------------------------------------------------------------------------- validation
