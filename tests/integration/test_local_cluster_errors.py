"""The embedded cluster's errors carry initdb's, pg_ctl's or the server's own message."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from pybatch.errors import LocalClusterError
from pybatch.local import _errors, temporary_cluster


def test_a_server_that_cannot_start_says_why() -> None:
    settings = {"shared_preload_libraries": "'pybatch_no_such_library'"}
    with pytest.raises(LocalClusterError) as caught, temporary_cluster(settings, prefix="pybatch-badstart-"):
        pass
    message = str(caught.value)
    assert "could not start the local cluster" in message
    assert 'could not access file "pybatch_no_such_library"' in message, message
    assert "\n" not in message


def test_initdb_failure_shows_initdbs_own_message(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory() as fake:
        bindir = Path(fake)
        for tool in ("initdb", "pg_ctl"):
            script = bindir / tool
            # What initdb 13 printed for an option it lacks, then its hint.
            script.write_text(
                "#!/bin/sh\necho \"$0: unrecognized option '--no-instructions'\" >&2\n"
                "echo 'initdb: hint: Try \"initdb --help\" for more information.' >&2\nexit 1\n"
            )
            script.chmod(0o755)
        Path(fake).chmod(0o755)
        monkeypatch.setenv("PYBATCH_PG_BINDIR", fake)
        with pytest.raises(LocalClusterError) as caught, temporary_cluster(prefix="pybatch-badinit-"):
            pass
    message = str(caught.value)
    assert "initdb failed in" in message and "unrecognized option '--no-instructions'" in message, message
    assert "hint" not in message


def test_errors_keeps_error_lines_not_progress_or_hints() -> None:
    output = (
        'The files belonging to this database system will be owned by user "postgres".\n'
        "Data page checksums are enabled.\n\n"
        'initdb: error: directory "/x" exists but is not empty\n'
        'initdb: hint: If you want to create a new database system, either remove or empty the directory "/x".\n'
    )
    assert _errors(output) == 'initdb: error: directory "/x" exists but is not empty'
    assert _errors("just one line\n") == "just one line"
    assert _errors("") == "no output"
