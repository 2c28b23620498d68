"""Check that every relative link in README.md points at a file or folder of the repository.

    python docs/check_links.py [FILE.md ...]    # default: README.md; exit 1 on a broken link

mkdocs (``mkdocs build --strict``) checks the links between the pages under docs/; README.md is not one
of them. A link passes when its target (without ``#anchor`` or ``?query``) exists inside the
repository and git does not ignore it (a link into ``runs/`` or ``site/`` would be broken on GitHub).
Web links (``https:``, ``mailto:``, ...) and pure ``#anchors`` are not checked. Links inside code
blocks and code spans are not links.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$")
FENCE = re.compile(r"^\s{0,3}(```|~~~)")
CODE_SPAN = re.compile(r"(`+).+?\1")
WEB = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # https:, mailto:, ...


def links(text: str):
    """(line number, target) of every link outside code."""
    in_fence = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        line = CODE_SPAN.sub("", line)
        for match in INLINE.finditer(line):
            yield number, match.group(1)
        if definition := DEFINITION.match(line):
            yield number, definition.group(1)


def ignored_by_git(path: Path) -> bool:
    try:
        return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT, capture_output=True).returncode == 0
    except OSError:  # no git: existence is all we can check
        return False


def problems(markdown: Path):
    for number, target in links(markdown.read_text()):
        if WEB.match(target) or target.startswith("#"):
            continue
        path = unquote(re.split(r"[#?]", target, maxsplit=1)[0])
        resolved = (ROOT / path.lstrip("/")) if path.startswith("/") else (markdown.parent / path)
        resolved = resolved.resolve()
        where = f"{markdown.relative_to(ROOT).as_posix()}:{number}"
        if not resolved.is_relative_to(ROOT):
            yield f"{where}: link {target!r} points outside the repository; link a file inside it"
        elif not resolved.exists():
            yield f"{where}: link {target!r} points at no file; expected {resolved.relative_to(ROOT).as_posix()} to exist"
        elif ignored_by_git(resolved):
            yield f"{where}: link {target!r} points at a file git ignores, so it is not in the repository"


def main(argv: list[str] | None = None) -> int:
    files = [Path(a).resolve() for a in (argv if argv is not None else sys.argv[1:])] or [ROOT / "README.md"]
    found = [problem for markdown in files for problem in problems(markdown)]
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
