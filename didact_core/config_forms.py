"""The one parser of each form a setting can take (booleans, comma lists, ``@file`` lists,
BMC entries, TLS verification), as pydantic annotated types for :mod:`didact_core.config`.

Ground floor: the standard library and pydantic only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(raw: Any) -> bool:
    """``1/0``, ``true/false``, ``yes/no``, ``on/off`` (any case) → bool; ValueError otherwise."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    word = str(raw).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("is not a boolean")


def _lines(spec: str) -> list[str]:
    """Entries of ``@/path`` (one a line) or of a comma list; blanks and ``#`` comments dropped."""
    if spec.startswith("@"):
        path = Path(spec[1:]).expanduser()
        try:
            items = path.read_text().splitlines()
        except OSError as e:
            raise ValueError(f"file {path} cannot be read ({e.strerror or e})") from None
    else:
        items = spec.split(",")
    return [s.strip() for s in items if s.strip() and not s.strip().startswith("#")]


def _comma_list(raw: Any) -> Any:
    return tuple(p.strip() for p in raw.split(",") if p.strip()) if isinstance(raw, str) else raw


def _list_or_file(raw: Any) -> Any:
    if isinstance(raw, str):
        return tuple(_lines(raw.strip()))
    if isinstance(raw, (list, tuple)) and len(raw) == 1 and str(raw[0]).startswith("@"):
        return tuple(_lines(str(raw[0])))  # "@/path" typed into a list field of the launchpad
    return raw


def _bmcs(raw: Any) -> tuple[str, ...]:
    entries = _list_or_file(raw)
    for i, entry in enumerate(entries):
        node, sep, url = str(entry).partition("=")
        if not sep or not node.strip() or not url.strip().startswith(("http://", "https://")):
            raise ValueError(f"entry {i + 1} {entry!r} is not node=http(s)://bmc")
    return tuple(entries)


def _tls_verify(raw: Any) -> bool | str:
    try:
        return parse_bool(raw)
    except ValueError:
        if Path(str(raw)).expanduser().is_file():
            return str(raw)
        raise ValueError("is neither a boolean nor an existing CA bundle file") from None


def _fspath(raw: Any) -> Any:
    return os.fspath(raw) if isinstance(raw, os.PathLike) else raw


Bool = Annotated[bool, BeforeValidator(parse_bool)]
PathStr = Annotated[str, BeforeValidator(_fspath)]
CommaList = Annotated[tuple[str, ...], BeforeValidator(_comma_list)]
IntList = Annotated[tuple[int, ...], BeforeValidator(_comma_list)]
ListOrFile = Annotated[tuple[str, ...], BeforeValidator(_list_or_file)]
TlsVerify = Annotated[bool | str, BeforeValidator(_tls_verify)]
