"""Load migrations/ and sql/ with importlib.resources.

In a wheel they live inside the package (pybatch/migrations, pybatch/sql); in a
source checkout they are the top-level folders beside pybatch/.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path


def _folder(name: str) -> Traversable:
    packaged = resources.files("pybatch") / name
    if packaged.is_dir():
        return packaged
    return _checkout_folder(name)


def _checkout_folder(name: str) -> Traversable:
    folder = Path(__file__).resolve().parent.parent / name
    if not folder.is_dir():
        raise FileNotFoundError(f"pybatch data folder {name!r} is missing from the installation")
    return folder


def migrations_dir() -> Path:
    """The yoyo migrations folder as a real path (yoyo reads from the file system)."""
    return Path(str(_folder("migrations")))


def read_sql(name: str) -> str:
    """Text of sql/<name>."""
    return _folder("sql").joinpath(name).read_text(encoding="utf-8")


def sql_files(folder: str) -> dict[str, str]:
    """Every .sql file under sql/<folder>/, by its path relative to sql/ (posix), with its text."""
    found: dict[str, str] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            path = f"{prefix}/{child.name}"
            if child.is_dir():
                walk(child, path)
            elif child.name.endswith(".sql"):
                found[path] = child.read_text(encoding="utf-8")

    walk(_folder("sql").joinpath(folder), folder)
    return found
