"""`pybatch completion bash|zsh`: a script generated from the CLI's own parser that completes
commands, actions and flags (issue 22: shell completion)."""

from __future__ import annotations

import shutil
import subprocess
import sys


def script(shell: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pybatch", "completion", shell], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout


def complete_bash(words: list[str]) -> list[str]:
    """What tab offers after `words` (the last one being completed), as bash would."""
    line = " ".join(words)
    program = (
        'source /dev/stdin; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); '
        f"COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}; _shtab_pybatch; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    )
    result = subprocess.run(
        ["bash", "-c", program, "bash", *words], input=script("bash"), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return sorted(line for line in result.stdout.splitlines() if line)


def test_bash_completes_commands_actions_and_flags() -> None:
    assert complete_bash(["pybatch", "mig"]) == ["migrate"]
    assert complete_bash(["pybatch", "cron", ""]) == ["install", "remove", "status"]
    assert {"--max-rows", "--json", "--dsn", "--log-level"} <= set(complete_bash(["pybatch", "flush", "--"]))
    assert complete_bash(["pybatch", "completion", ""]) == ["bash", "zsh"]


def test_bash_script_is_valid_shell() -> None:
    subprocess.run(["bash", "-n"], input=script("bash"), text=True, check=True, timeout=60)


def test_zsh_script_completes_pybatch() -> None:
    text = script("zsh")
    assert text.startswith("#compdef pybatch")
    assert "migrate" in text and "--max-rows" in text
    zsh = shutil.which("zsh")
    assert zsh is not None, "zsh is missing: `make setup` installs it (scripts/setup.sh)"
    subprocess.run([zsh, "-n"], input=text, text=True, check=True, timeout=60)


def test_an_unknown_shell_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pybatch", "completion", "fish"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "invalid choice: 'fish'" in result.stderr
