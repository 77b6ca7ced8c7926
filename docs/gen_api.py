"""Write docs/api.md, the API reference, from the docstrings of the public names.

Run ``python docs/gen_api.py`` after changing a public docstring;
``tests/test_docs.py`` fails while docs/api.md is out of date.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import re
import sys
from pathlib import Path

MODULES = (
    "almost_raft",
    "almost_raft.host",
    "almost_raft.leadership",
    "almost_raft.node",
    "almost_raft.asgi",
    "almost_raft.status",
    "almost_raft.testing",
    "almost_raft.transports",
)
OUT = Path(__file__).with_name("api.md")


_SECTIONS = ("Args:", "Attributes:", "Returns:", "Raises:", "Yields:")


def _doc(obj: object) -> str:
    """The docstring as Markdown: Google-style sections become bullet lists."""
    lines = inspect.cleandoc(obj.__doc__ or "(undocumented)").splitlines()
    out: list[str] = []
    in_section = False
    for line in lines:
        stripped = line.strip()
        if stripped in _SECTIONS:
            in_section = True
            out += [f"**{stripped[:-1]}**", ""]
        elif in_section and line.startswith("        ") and out:
            out[-1] += " " + stripped
        elif in_section and line.startswith("    "):
            name, sep, rest = stripped.partition(": ")
            out.append(f"- `{name}`: {rest}" if sep else f"- {stripped}")
        else:
            if in_section and stripped:
                out.append("")
            in_section = False
            out.append(line)
    return "\n".join(out)


def _signature(obj: object) -> str:
    try:
        text = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    return re.sub(r" object at 0x[0-9a-fA-F]+", " object", text)  # stable across runs


def _kind(func: object) -> str:
    """How a callable is used: ``"async "`` for a coroutine function (``await`` it), ``"async with "``
    for an async context manager function, else ``""``."""
    if inspect.iscoroutinefunction(func):
        return "async "
    if inspect.isasyncgenfunction(getattr(func, "__wrapped__", None)):
        return "async with "
    return ""


def _member_lines(cls: type) -> list[str]:
    lines: list[str] = []
    for name, member in vars(cls).items():
        if name.startswith("_") or name in {"validate"}:
            continue
        if isinstance(member, property):
            lines.append(f"- `{name}` (property): {_doc(member).splitlines()[0]}")
        elif isinstance(member, classmethod):
            func = member.__func__
            lines.append(f"- `{_kind(func)}{name}{_signature(func)}` (classmethod): {_doc(func).splitlines()[0]}")
        elif inspect.isfunction(member):
            lines.append(f"- `{_kind(member)}{name}{_signature(member)}`: {_doc(member).splitlines()[0]}")
    return lines


def render() -> str:
    parts = [
        "# API reference",
        "",
        "Generated from the docstrings by `python docs/gen_api.py`; do not edit by hand.",
        "",
        "`async name(...)` is a coroutine function: call it with `await` (and write it with `async def`",
        "when you implement a protocol such as `Node` or `Storage`). `async with name(...)` is an async",
        "context manager.",
        "",
    ]
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        parts += [f"## `{module_name}`", "", _doc(module), ""]
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj):
                if dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum):
                    head = f"### class `{name}`"
                else:
                    head = f"### class `{name}{_signature(obj)}`"
                parts += [head, "", _doc(obj), ""]
                if issubclass(obj, enum.Enum):
                    parts += [f"- `{m.name}` = `{m.value!r}`" for m in obj] + [""]
                members = _member_lines(obj)
                if members:
                    parts += [*members, ""]
            elif callable(obj) and not hasattr(obj, "__origin__"):
                parts += [f"### `{_kind(obj)}{name}{_signature(obj)}`", "", _doc(obj), ""]
            else:
                parts += [f"### `{name}`", "", f"Type alias: `{obj}`", ""]
    return "\n".join(parts).rstrip() + "\n"


def main() -> None:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
