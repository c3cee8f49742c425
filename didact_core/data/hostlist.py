"""Slurm's compressed host lists (``node[001-004,010],gpu01``), expanded to node names.

Shared by the sacct job-labels reader and live job membership from ``squeue``; pure Python, so
no ``scontrol show hostnames`` call is needed where Slurm's commands are not installed.
"""

from __future__ import annotations

import re


def expand_hostlist(spec: str) -> list[str]:
    """Expand a Slurm host list: ``n[01-03,07],gpu1`` → ``[n01, n02, n03, n07, gpu1]``.

    Zero padding is kept (``[008-011]`` → 008, 009, 010, 011); several bracket groups
    (``r[1-2]n[1-2]``) multiply out.
    """
    spec = spec.strip()
    if not spec:
        return []
    out: list[str] = []
    for item in _split_top(spec):
        parts = re.split(r"(\[[^\]]*\])", item)
        names = [""]
        for part in parts:
            if part.startswith("[") and part.endswith("]"):
                choices = []
                for rng in part[1:-1].split(","):
                    rng = rng.strip()
                    if "-" in rng:
                        a, b = rng.split("-", 1)
                        if not (a.isdigit() and b.isdigit()) or int(b) < int(a):
                            raise ValueError(f"bad range {rng!r} in host list {spec!r}")
                        width = len(a)
                        choices += [str(i).zfill(width) for i in range(int(a), int(b) + 1)]
                    elif rng:
                        choices.append(rng)
                names = [n + c for n in names for c in choices]
            elif "[" in part or "]" in part:
                raise ValueError(f"unbalanced brackets in host list {spec!r}")
            else:
                names = [n + part for n in names]
        out += names
    return out


def _split_top(spec: str) -> list[str]:
    """Split on commas outside brackets."""
    items, depth, cur = [], 0, []
    for ch in spec:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur))
    return [i.strip() for i in items if i.strip()]
