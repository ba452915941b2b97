"""The commands in README.md's code blocks, read the way a user copies them (tests/test_readme.py)."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"

# Names in the README that stand for the user's own files (explained next to the command), not files
# that a fresh clone or an earlier block makes.
PLACEHOLDERS = {"my.yaml": "the config shown right below the command"}


@dataclass
class Command:
    block: int  # index of the code block in the README
    order: int  # index of the command in the README
    line: str  # as written, comment removed
    argv: list[str]  # split as bash would (quotes removed)


def blocks(text: str | None = None) -> list[str]:
    text = README.read_text() if text is None else text
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M) if m.group(1) in ("bash", "sh")]


def commands(text: str | None = None) -> list[Command]:
    out = []
    for n, block in enumerate(blocks(text)):
        for raw in block.splitlines():
            argv = shlex.split(raw, comments=True)
            if argv:
                out.append(Command(n, len(out), shlex.join(argv), argv))
    return out


def program(argv: list[str]) -> str:
    """``curate``, ``prefect``, ``bench``, ``bash``, ``source``, ``pip``, ``torchrun`` or the first word."""
    head = Path(argv[0]).name
    if head.startswith("python") and argv[1:2] == ["-m"] and argv[2].startswith("bench."):
        return "bench"
    return {"python": "python", "python3": "python"}.get(head, head)


def curate_argv(argv: list[str]) -> list[str] | None:
    """The arguments after ``curate`` (also ``torchrun ... -m app.cli``), or None."""
    if Path(argv[0]).name == "curate":
        return argv[1:]
    if "-m" in argv and argv[argv.index("-m") + 1: argv.index("-m") + 2] == ["app.cli"]:
        return argv[argv.index("-m") + 2:]
    return None


def option(argv: list[str], name: str) -> str | None:
    for n, tok in enumerate(argv):
        if tok == name and n + 1 < len(argv):
            return argv[n + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return None
