"""ensure_citus() without Citus: what it tells a user from a wheel and from a checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from pybatch import local_citus


def test_the_build_script_is_in_the_repository() -> None:
    assert local_citus.BUILD_SCRIPT.is_file()
    source = local_citus.BUILD_SCRIPT.parent.parent / "third_party" / "citus" / "citus-13.2.2-src.tar.gz"
    assert source.is_file(), "scripts/build_citus.sh builds from third_party/citus"


def test_from_a_wheel_it_names_citus_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(local_citus, "citus_installed", lambda: False)
    monkeypatch.setattr(local_citus, "citus_library", lambda: tmp_path / "citus.so")
    monkeypatch.setattr(local_citus, "BUILD_SCRIPT", tmp_path / "scripts" / "build_citus.sh")
    with pytest.raises(local_citus.CitusUnavailable) as caught:
        local_citus.ensure_citus()
    message = str(caught.value)
    assert "Citus's own packages" in message
    assert "scripts/build_citus.sh" in message and "clone" in message
    assert str(tmp_path / "scripts") not in message  # no path that does not exist


def test_from_a_checkout_as_a_normal_user_it_names_the_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(local_citus, "citus_installed", lambda: False)
    monkeypatch.setattr(local_citus, "citus_library", lambda: tmp_path / "citus.so")
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(local_citus.CitusUnavailable) as caught:
        local_citus.ensure_citus()
    assert f"sudo bash {local_citus.BUILD_SCRIPT}" in str(caught.value)
