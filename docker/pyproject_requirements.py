"""Print the requirements of dyhead-serve and some of its extras, one per line, read from
pyproject.toml.

The images install these in a layer of their own, from pyproject.toml alone, before the source is
copied: editing the code then rebuilds only the small layer that installs the package itself.

    python3 pyproject_requirements.py pyproject.toml serve gpu > requirements.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import tomllib


def requirements(pyproject: dict[str, Any], extras: list[str]) -> list[str]:
    """The core dependencies and those of ``extras``, with self-references (``pkg[a,b]``) expanded."""
    project = pyproject["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    self_reference = re.compile(rf"{re.escape(project['name'])}\[([^\]]+)\]")
    found = list(project.get("dependencies", []))
    seen: set[str] = set()

    def add(extra: str) -> None:
        if extra in seen:
            return
        if extra not in optional:
            raise ValueError(f"pyproject.toml has no extra {extra!r}; it has {', '.join(optional)}")
        seen.add(extra)
        for requirement in optional[extra]:
            nested = self_reference.fullmatch(requirement.replace(" ", ""))
            if nested:
                for name in nested.group(1).split(","):
                    add(name)
            elif requirement not in found:
                found.append(requirement)

    for extra in extras:
        add(extra)
    return found


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    pyproject = tomllib.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        lines = requirements(pyproject, argv[1:])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
