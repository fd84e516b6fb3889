"""Generate pybatch's sync code from its async source (psycopg's approach, much smaller).

    python tools/async_to_sync.py           # rewrite every generated file
    python tools/async_to_sync.py --check   # exit 1 naming the generated files that are stale

Each async source in PAIRS is the one place its logic is written; its sync twin is derived:
- `async def`, `async with`, `async for` lose `async`; `await` disappears;
- names map as NAMES and DOTTED say, in code, strings and comments (so docstrings follow);
- an `if True:  # ASYNC` block is dropped, and its `else:` block, if any, is kept (dedented,
  verbatim: no mapping), so code that only one flavour runs sits side by side with its twin;
- `@run_async` decorator lines (how the async tests run without a plugin) are dropped;
- comment lines before the module docstring are replaced by a header naming the source;
- finally `ruff check --select I,SIM117 --fix` and `ruff format` tidy imports, `with` blocks that
  were nested only because an `async with` cannot share a statement with a `with`, and layout.

tests/unit/test_generated.py fails while a generated file differs from what this produces.
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (async source, generated sync file), relative to the repository root.
PAIRS: tuple[tuple[str, str], ...] = (
    ("pybatch/aio.py", "pybatch/client.py"),
    ("tests/integration/test_client_async.py", "tests/integration/test_client.py"),
    ("tests/integration/test_client_outage_async.py", "tests/integration/test_client_outage.py"),
)

NAMES = {
    "AsyncHeartbeatClient": "HeartbeatClient",
    "AsyncConnectionPool": "ConnectionPool",
    "AsyncConnection": "Connection",
    "_AsyncConnections": "_Connections",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "AsyncWork": "Work",
}
# module.attribute -> its sync replacement (the module must be imported on the sync side).
DOTTED = {
    ("asyncio", "Lock"): "threading.Lock",
    ("asyncio", "Event"): "threading.Event",
    ("asyncio", "sleep"): "time.sleep",
}
DROPPED_DECORATORS = frozenset({"@run_async"})

_ASYNC_IF = re.compile(r"^(?P<indent>[ ]*)if True:[ ]*# ASYNC[ ]*$")
_WORDS = re.compile(r"\b(" + "|".join(sorted(map(re.escape, NAMES), key=len, reverse=True)) + r")\b")


def _block_end(lines: list[str], start: int, indent: str) -> int:
    """Index after the block starting at `start` whose lines are indented deeper than `indent`
    (trailing blank lines are not part of it)."""
    end = start
    last = start
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(indent + " ")):
        if lines[end].strip():
            last = end + 1
        end += 1
    return last


def _async_blocks(lines: list[str]) -> list[tuple[int, int, int, int]]:
    """Each `if True:  # ASYNC` block as (if line, body end, else body start, else body end);
    without an else, the else body is empty (start == end == body end)."""
    blocks = []
    for number, line in enumerate(lines):
        match = _ASYNC_IF.match(line)
        if not match:
            continue
        indent = match["indent"]
        body_end = _block_end(lines, number + 1, indent)
        if body_end == number + 1:
            raise SyntaxError(f"line {number + 1}: empty `if True:  # ASYNC` block")
        else_start = else_end = body_end
        if body_end < len(lines) and lines[body_end].rstrip() == f"{indent}else:":
            else_start = body_end + 1
            else_end = _block_end(lines, else_start, indent)
        blocks.append((number, body_end, else_start, else_end))
    return blocks


def _map_tokens(source: str, verbatim: set[int]) -> str:
    """Drop async/await and rename, except on the (1-based) lines in `verbatim`."""
    line_starts = [0]
    for line in source.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))

    def offset(pos: tuple[int, int]) -> int:
        return line_starts[pos[0] - 1] + pos[1]

    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    edits: list[tuple[int, int, str]] = []
    for i, tok in enumerate(tokens):
        if tok.start[0] in verbatim:
            continue
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.type == tokenize.NAME:
            dropped = tok.string == "await" or (
                tok.string == "async" and following is not None and following.string in ("def", "with", "for")
            )
            if dropped and following is not None:
                edits.append((offset(tok.start), offset(following.start), ""))
            elif tok.string in NAMES:
                edits.append((offset(tok.start), offset(tok.end), NAMES[tok.string]))
            elif (
                following is not None
                and following.string == "."
                and i + 2 < len(tokens)
                and (tok.string, tokens[i + 2].string) in DOTTED
                and not (i > 0 and tokens[i - 1].string == ".")
            ):
                edits.append((offset(tok.start), offset(tokens[i + 2].end), DOTTED[tok.string, tokens[i + 2].string]))
        elif tok.type in (tokenize.STRING, tokenize.COMMENT):
            renamed = _WORDS.sub(lambda m: NAMES[m.group(1)], tok.string)
            if renamed != tok.string:
                edits.append((offset(tok.start), offset(tok.end), renamed))
    # A dotted match covers the attribute token too, which never needs its own edit here.
    for start, end, text in sorted(edits, reverse=True):
        source = source[:start] + text + source[end:]
    return source


def _dedent(line: str) -> str:
    return line[4:] if line.startswith("    ") else line


def to_sync(source: str, *, source_name: str) -> str:
    """The sync twin of `source`, before ruff tidies it."""
    lines = source.splitlines(keepends=True)
    blocks = _async_blocks(lines)
    verbatim = {n + 1 for first, _, else_start, else_end in blocks for n in range(first + 1, else_end)}
    mapped = _map_tokens(source, verbatim).splitlines(keepends=True)
    if len(mapped) != len(lines):
        raise AssertionError("token mapping must keep the line count")
    keep = [True] * len(mapped)
    replaced: dict[int, str] = {}
    for first, _body_end, else_start, else_end in blocks:
        for n in range(first, else_start):  # the `if`, its body and the `else:` line
            keep[n] = False
        for n in range(else_start, else_end):
            replaced[n] = _dedent(mapped[n])
    out = [replaced.get(n, line) for n, line in enumerate(mapped) if keep[n]]
    out = [line for line in out if line.strip() not in DROPPED_DECORATORS]
    while out and out[0].startswith("#"):
        out.pop(0)
    header = (
        f"# WARNING: generated from {source_name} by tools/async_to_sync.py. DO NOT EDIT:\n"
        f"# change {source_name}, then run `python tools/async_to_sync.py`.\n"
    )
    return header + "".join(out)


def _ruff(args: list[str], source: str, target: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", target, "-"],
        input=source,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"ruff {args[0]} failed on the generated {target}:\n{result.stderr}{result.stdout}")
    return result.stdout


def generate(source_path: str, target_path: str) -> str:
    """The full text of the generated file for one pair."""
    source = (ROOT / source_path).read_text()
    code = to_sync(source, source_name=source_path)
    code = _ruff(["check", "--select", "I,SIM117", "--fix", "--exit-zero", "--quiet"], code, target_path)
    return _ruff(["format", "--quiet"], code, target_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate pybatch's sync code from its async source.")
    parser.add_argument("--check", action="store_true", help="report stale generated files, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for source_path, target_path in PAIRS:
        text = generate(source_path, target_path)
        target = ROOT / target_path
        if target.exists() and target.read_text() == text:
            continue
        stale.append(target_path)
        if not args.check:
            target.write_text(text)
            print(f"wrote {target_path}")
    if args.check and stale:
        print(f"stale: {', '.join(stale)}; run `python tools/async_to_sync.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
