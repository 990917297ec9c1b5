"""Read Dockerfiles and .dockerignore as Docker does, enough to check them without a daemon."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Instruction", "copy_sources", "dockerignore_excludes", "exec_form", "parse_dockerfile"]


@dataclass(frozen=True)
class Instruction:
    """One instruction: keyword in upper case, its arguments with line continuations joined."""

    keyword: str
    args: str
    line: int


def parse_dockerfile(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile (comments, blank lines and continuations resolved)."""
    instructions: list[Instruction] = []
    buffer: str | None = None
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue  # Docker drops these inside a continued instruction too
        if buffer is None:
            buffer, start = "", number
        if text.endswith("\\"):
            buffer += text[:-1].strip() + " "
            continue
        keyword, _, rest = (buffer + text).partition(" ")
        instructions.append(Instruction(keyword.upper(), rest.strip(), start))
        buffer = None
    assert buffer is None, f"{path}: the last instruction ends with a continuation"
    return instructions


def exec_form(args: str) -> list[str]:
    """The JSON (exec) form of CMD / ENTRYPOINT / HEALTHCHECK CMD arguments."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def copy_sources(instruction: Instruction) -> tuple[list[str], str]:
    """(sources, destination) of a COPY from the build context (flags dropped)."""
    words = exec_form(instruction.args) if instruction.args.startswith("[") else shlex.split(instruction.args)
    words = [w for w in words if not w.startswith("--")]
    return words[:-1], words[-1]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Go filepath.Match syntax plus Docker's ``**`` (any number of directories)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(dockerignore: Path, path: str) -> bool:
    """Whether ``path`` (relative to the context) is left out of the build context.

    The last rule that matches the path or one of its parent folders decides; ``!`` re-includes.
    """
    rules = []
    for raw in dockerignore.read_text().splitlines():
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        negate = text.startswith("!")
        pattern = text[1:].strip() if negate else text
        rules.append((negate, _pattern_regex(pattern.strip("/"))))
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded
