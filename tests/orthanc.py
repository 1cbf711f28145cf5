"""A real Orthanc (Debian's ``Orthanc`` binary) on loopback: the remote PACS of the SCU tests.

Each instance gets its own JSON configuration, storage and free ports under a test's
``tmp_path``: HTTP bound to loopback only (``RemoteAccessAllowed: false``), no
authentication, no plugins, and every calling AE may query and retrieve. ``modalities``
declares C-MOVE destinations. Configuration keys are those of Orthanc 1.10
(``/etc/orthanc/orthanc.json`` lists them with their defaults).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    """One Orthanc process; ``start()`` returns once both its DICOM and HTTP servers answer."""

    work: Path
    aet: str = "ORTHANC"
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # name -> (AE title, host, port)
    options: dict[str, object] = field(default_factory=dict)  # more configuration keys, overriding ours
    dicom_port: int = 0  # chosen at the first start
    http_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.work / "orthanc.log"

    def config(self) -> dict[str, object]:
        return {
            "Name": "dicomfs-tests",
            "StorageDirectory": str(self.work / "storage"),
            "IndexDirectory": str(self.work / "storage"),
            "TemporaryDirectory": str(self.work / "tmp"),
            "Plugins": [],
            "LuaScripts": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,  # HTTP from loopback only
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            # Our AE is no declared modality: let any calling AE query and retrieve.
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {name: [aet, host, port] for name, (aet, host, port) in self.modalities.items()},
            "DicomScuTimeout": 10,
            "StorageCompression": False,
            "SyncStorageArea": False,  # no fsync per upload: tests need no durability
            "SaveJobs": False,
            "SynchronousCMove": True,
            **self.options,
        }

    def start(self) -> Orthanc:
        if self.proc is not None:
            raise RuntimeError("Orthanc is already running")
        self.work.mkdir(parents=True, exist_ok=True)
        if not self.dicom_port:  # a restart keeps its ports, as a PACS that comes back would
            self.dicom_port, self.http_port = _free_port(), _free_port()
        config_path = self.work / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        env = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK inside Orthanc stalls ~45 ms per object without it
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["Orthanc", str(config_path)], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while not (self._http_ready() and self._dicom_ready()):
            if self.proc.poll() is not None:
                raise AssertionError(f"Orthanc exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"Orthanc did not start within {START_TIMEOUT}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def _http_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/system", timeout=1) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def _dicom_ready(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.dicom_port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; returns the exit status (None if never started)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def upload(self, paths: Iterable[Path]) -> list[str]:
        """POST each file to /instances; returns Orthanc's instance ids, in order."""
        ids = []
        for path in paths:
            request = urllib.request.Request(
                f"{self.url}/instances", data=Path(path).read_bytes(), method="POST",
                headers={"Content-Type": "application/dicom"},
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.load(response)
            if answer.get("Status") not in ("Success", "AlreadyStored"):
                raise AssertionError(f"Orthanc refused {path}: {answer}")
            ids.append(str(answer["ID"]))
        return ids

    def get_json(self, path: str) -> object:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
            return json.load(response)
