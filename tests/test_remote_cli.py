"""The mistakes and failures a user meets with ``dicomfs remote``: one line each, the documented exit
status (2: a mistake to correct; 1: the remote is down, silent or failed), never a traceback."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, run_cli
from orthanc import Orthanc


def config_for(tmp_path: Path, port: int, *, ae_title: str = "ORTHANC", timeout: float = 10) -> Path:
    path = tmp_path / "dicomfs.toml"
    path.write_text(f'[[dicom.remotes]]\nname = "pacs"\nae_title = "{ae_title}"\nhost = "127.0.0.1"\nport = {port}\n'
                    f'timeout = {timeout}\n')
    return path


def one_line_failure(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if " INFO " not in line]  # e.g. "making a new archive"
    assert len(lines) == 1 and lines[0].startswith("dicomfs: "), result.stderr
    return lines[0]


def test_an_unknown_remote_name(tmp_path: Path) -> None:
    config = config_for(tmp_path, free_port())
    for action in (["echo", "nope"], ["query", "nope", "PatientID=1"], ["pull", "nope", "--study", "1.2"]):
        line = one_line_failure(run_cli("remote", *action, "--config", config, check=False), 2)
        assert line == "dicomfs: no remote named 'nope' (known: pacs; add one with 'dicomfs remote add')"


def test_a_remote_that_is_down(tmp_path: Path) -> None:
    port = free_port()
    config = config_for(tmp_path, port)
    started = time.monotonic()
    line = one_line_failure(run_cli("remote", "query", "pacs", "PatientID=1", "--config", config, check=False), 1)
    assert line == (f"dicomfs: C-FIND on pacs (ORTHANC@127.0.0.1:{port}) failed: cannot connect: Connection refused "
                    f"(is it running, at that host and port?)")
    assert time.monotonic() - started < 5  # the command's start-up included
    options_first = run_cli("remote", "query", "--config", config, "pacs", "--level", "series", "PatientID=1",
                            check=False)  # query words after options are words still
    assert one_line_failure(options_first, 1) == line


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Connections the kernel completes, and nobody answers (a frozen or wedged PACS)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_a_remote_that_does_not_answer(tmp_path: Path, silent_port: int) -> None:
    config = config_for(tmp_path, silent_port, timeout=1)
    line = one_line_failure(run_cli("remote", "echo", "pacs", "--config", config, check=False), 1)
    assert line == f"dicomfs: C-ECHO on pacs (ORTHANC@127.0.0.1:{silent_port}) failed: no answer within 1 s"


def test_a_remote_that_does_not_know_its_ae_title(orthanc: Orthanc, tmp_path: Path) -> None:
    orthanc.options = {"DicomCheckCalledAet": True}
    orthanc.start()
    config = config_for(tmp_path, orthanc.dicom_port, ae_title="PACS")
    line = one_line_failure(run_cli("remote", "echo", "pacs", "--config", config, check=False), 2)
    assert line == (f"dicomfs: C-ECHO on pacs (PACS@127.0.0.1:{orthanc.dicom_port}) failed: association rejected: "
                    f"called AE title not recognised (the remote is not 'PACS': correct the ae_title of remote pacs)")


def test_a_remote_that_does_not_know_our_ae_title(orthanc: Orthanc, tmp_path: Path) -> None:
    orthanc.options = {f"DicomAlwaysAllow{service}": False for service in ("Echo", "Store", "Find", "Get", "Move")}
    orthanc.start()
    config = config_for(tmp_path, orthanc.dicom_port)
    line = one_line_failure(run_cli("remote", "query", "pacs", "PatientID=1", "--config", config, check=False), 2)
    assert line == (f"dicomfs: C-FIND on pacs (ORTHANC@127.0.0.1:{orthanc.dicom_port}) failed: association rejected: "
                    f"calling AE title not recognised (declare our AE title 'DICOMFS' on the remote, or set [dicom] "
                    f"ae_title to one it knows)")


def test_terms_a_remote_cannot_be_sent_and_a_study_it_does_not_have(orthanc: Orthanc, tmp_path: Path,
                                                                      data_dir: Path) -> None:
    orthanc.start()
    config = config_for(tmp_path, orthanc.dicom_port)
    line = one_line_failure(run_cli("remote", "query", "pacs", "Modality=CT and not tag:excluded", "--config", config,
                                    check=False), 2)
    assert line == ("dicomfs: 'not tag:excluded' cannot be sent to a remote: C-FIND has no 'not'")
    line = one_line_failure(run_cli("remote", "query", "pacs", "SeriesDescription=Soft", "--config", config,
                                    check=False), 2)
    assert "SeriesDescription belongs to the series level (query at series level)" in line
    syntax = run_cli("remote", "query", "pacs", "StudyDate>=", "--config", config, check=False)
    assert syntax.returncode == 2 and "expected a value after '>='" in syntax.stderr  # with a caret, as find
    line = one_line_failure(run_cli("remote", "pull", "pacs", "--study", "1.2.3.4", "--data-dir", data_dir,
                                    "--config", config, check=False), 2)
    assert line == "dicomfs: remote pacs has no study 1.2.3.4"
    line = one_line_failure(run_cli("remote", "add", "other", "--aet", "X", "--host", "127.0.0.1", "--listing",
                                    "project:Trial", "--config", config, check=False), 2)
    assert line == "dicomfs: 'project:Trial' cannot be sent to a remote: tags, projects and has:derived belong to " \
                   "this archive"


def test_a_remote_with_no_associations_is_a_setting_to_correct(tmp_path: Path) -> None:
    config = config_for(tmp_path, free_port())
    config.write_text(config.read_text() + "associations = 0\n")
    line = one_line_failure(run_cli("remote", "echo", "pacs", "--config", config, check=False), 2)
    assert "remote 'pacs': associations must be at least 1" in line
