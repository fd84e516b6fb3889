"""pybatch's SQL installs in a database of any encoding only while it is plain ASCII: a LATIN1
database rejects a character it has no equivalent for (an em dash in a comment is enough), and
a SQL_ASCII one stores its bytes unchecked."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_sql_file_pybatch_sends_is_ascii() -> None:
    files = sorted({*ROOT.joinpath("migrations").rglob("*.sql"), *ROOT.joinpath("sql").rglob("*.sql")})
    assert files, "no SQL files found"
    offenders = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.isascii():
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "non-ASCII in SQL (breaks `migrate` in a LATIN1 database):\n" + "\n".join(offenders)
