"""scripts/setup.sh: a normal user without the system packages gets one line they can paste,
naming the real packages for this machine (never a placeholder such as `<major>`)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = re.compile(r"^[a-z0-9][a-z0-9.+-]+$")


def _hint() -> tuple[int, str, str]:
    env = {**os.environ, "PYBATCH_SETUP_ASSUME_MISSING": "1", "PYBATCH_SETUP_ASSUME_USER": "1"}
    result = subprocess.run(
        ["bash", "scripts/setup.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    commands = [line for line in lines if "apt-get install" in line]
    assert len(commands) == 1, result.stderr
    return result.returncode, commands[0], result.stdout


def test_install_hint_is_a_pasteable_command_with_real_package_names() -> None:
    returncode, line, stdout = _hint()
    assert returncode == 1 and stdout == ""
    assert "<" not in line and ">" not in line and "|" not in line and "$" not in line, line
    subprocess.run(["bash", "-n", "-c", line], check=True)  # valid shell syntax
    words = shlex.split(line)
    assert words[:4] == ["sudo", "apt-get", "update", "&&"], line
    assert words[4:8] == ["sudo", "apt-get", "install", "-y"], line
    packages = words[8:]
    assert packages and all(PACKAGE.match(p) for p in packages), packages
    servers = [p for p in packages if re.fullmatch(r"postgresql-\d+", p)]
    crons = [p for p in packages if re.fullmatch(r"postgresql-\d+-cron", p)]
    assert len(servers) == 1 and crons == [f"{servers[0]}-cron"], packages
    assert "pgbouncer" in packages, packages  # the pooler tests (tests/integration/test_pgbouncer.py)
    assert "zsh" in packages, packages  # the completion test checks the zsh script with zsh
    # This machine has them installed (the hint was forced): each name is one dpkg knows.
    assert shutil.which("dpkg-query") is not None
    for package in packages:
        known = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
        )
        assert known.returncode == 0 and "installed" in known.stdout, f"{package}: {known.stderr}"


def test_install_hint_matches_the_installed_major() -> None:
    _, line, _ = _hint()
    out = subprocess.run(["pg_config", "--version"], capture_output=True, text=True, check=True).stdout
    major = re.match(r"PostgreSQL (\d+)", out)
    assert major is not None
    assert f"postgresql-{major.group(1)}-cron" in shlex.split(line)


def test_setup_reinstalls_after_pip_uninstall(tmp_path: Path) -> None:
    """The README's uninstall ends with `pip uninstall pybatch-pg`; `make demo` afterwards must
    install pybatch again, though .venv and its stamp file are still there."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    calls = tmp_path / "calls.log"
    # A stand-in for the venv's python: logs its arguments; `-c` probes fail (pybatch-pg is not
    # installed), pip succeeds and installs the `pybatch` command as pip would.
    fake = bin_dir / "python"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        'case "$1" in -c) exit 1;; esac\n'
        f'case "$*" in *"pip install"*"-e"*) touch {bin_dir / "pybatch"}; chmod +x {bin_dir / "pybatch"};; esac\n'
        "exit 0\n"
    )
    fake.chmod(0o755)
    stamp = tmp_path / ".venv" / ".pybatch-installed"
    stamp.touch()
    os.utime(tmp_path / "pyproject.toml", (1, 1))  # older than the stamp: only the uninstall says "install"
    result = subprocess.run(
        ["bash", "scripts/setup.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "pip install --quiet -e" in calls.read_text(), calls.read_text()
    # Installed now: a second run leaves it alone.
    calls.write_text("")
    (bin_dir / "python").write_text(fake.read_text().replace('case "$1" in -c) exit 1;; esac\n', ""))
    again = subprocess.run(
        ["bash", "scripts/setup.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert again.returncode == 0, again.stderr
    assert "pip install" not in calls.read_text(), calls.read_text()
