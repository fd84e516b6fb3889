"""The sync client and its tests are generated from their async sources: never stale."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("async_to_sync", ROOT / "tools" / "async_to_sync.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("async_to_sync", module)
    spec.loader.exec_module(module)
    return module


GENERATOR = load_generator()


@pytest.mark.parametrize(("source", "target"), GENERATOR.PAIRS)
def test_generated_file_is_up_to_date(source: str, target: str) -> None:
    expected = GENERATOR.generate(source, target)
    actual = (ROOT / target).read_text()
    assert actual == expected, f"{target} is stale: edit {source}, then run `python tools/async_to_sync.py`"


def test_generated_file_says_so() -> None:
    for source, target in GENERATOR.PAIRS:
        first = (ROOT / target).read_text().splitlines()[0]
        assert first.startswith(f"# WARNING: generated from {source}"), target


def test_async_only_blocks_are_dropped_and_their_else_kept_verbatim() -> None:
    source = (
        '"""AsyncHeartbeatClient docs."""\n'
        "import asyncio\n"
        "\n"
        "\n"
        "async def f(conn: AsyncConnection) -> None:\n"
        "    lock = asyncio.Lock()\n"
        "    async with lock:  # AsyncHeartbeatClient\n"
        "        await conn.execute('x')\n"
        "    if True:  # ASYNC\n"
        "        await asyncio.sleep(1)\n"
        "    else:\n"
        "        print('AsyncHeartbeatClient')\n"
        "    if True:  # ASYNC\n"
        "        x = 1\n"
        "\n"
        "    async for row in conn:\n"
        "        pass\n"
    )
    assert GENERATOR.to_sync(source, source_name="src.py") == (
        "# WARNING: generated from src.py by tools/async_to_sync.py. DO NOT EDIT:\n"
        "# change src.py, then run `python tools/async_to_sync.py`.\n"
        '"""HeartbeatClient docs."""\n'
        "import asyncio\n"
        "\n"
        "\n"
        "def f(conn: Connection) -> None:\n"
        "    lock = threading.Lock()\n"
        "    with lock:  # HeartbeatClient\n"
        "        conn.execute('x')\n"
        "    print('AsyncHeartbeatClient')\n"
        "\n"
        "    for row in conn:\n"
        "        pass\n"
    )


def test_a_stale_file_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--check fails, naming the file, when a generated file differs from its source's output."""
    (tmp_path / "src.py").write_text('"""AsyncThing."""\n\n\nasync def f() -> None:\n    await g()\n')
    (tmp_path / "out.py").write_text("stale\n")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    monkeypatch.setattr(GENERATOR, "ROOT", tmp_path)
    monkeypatch.setattr(GENERATOR, "PAIRS", (("src.py", "out.py"),))
    assert GENERATOR.main(["--check"]) == 1
    assert (tmp_path / "out.py").read_text() == "stale\n"  # --check writes nothing
    assert GENERATOR.main([]) == 0
    assert "def f() -> None:\n    g()\n" in (tmp_path / "out.py").read_text()
    assert GENERATOR.main(["--check"]) == 0
