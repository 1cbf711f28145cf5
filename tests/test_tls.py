"""DICOM TLS (PS3.15 BCP 195) with DCMTK peers and certificates made by openssl."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import dicomgen
import pytest
from conftest import Daemon, dcmtk

from dicomfs.config import RemoteNode
from dicomfs.net import scu


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", key, "-out", cert)
    return key, cert


def _signed(directory: Path, name: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.crt"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", key, "-out", csr)
    ext = directory / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", csr, "-CA", ca[1], "-CAkey", ca[0], "-CAcreateserial", "-days", "2",
             "-extfile", ext, "-out", cert)
    return key, cert


@pytest.fixture
def tls_node(daemon: Daemon, tmp_path: Path) -> tuple[Daemon, dict[str, tuple[Path, Path]]]:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = _ca(pki, "ca")
    certs = {"ca": ca, "server": _signed(pki, "server", ca), "client": _signed(pki, "client", ca)}
    stranger_ca = _ca(pki, "stranger-ca")
    certs["stranger"] = _signed(pki, "stranger", stranger_ca)
    config = tmp_path / "tls.toml"
    config.write_text(f'[dicom.tls]\ncert = "{certs["server"][1]}"\nkey = "{certs["server"][0]}"\n'
                      f'ca = "{ca[1]}"\n')
    daemon.start("--config", str(config))
    return daemon, certs


def test_tls_echo_and_store(tls_node: tuple[Daemon, dict[str, tuple[Path, Path]]], tmp_path: Path) -> None:
    daemon, certs = tls_node
    tls = ["+tls", certs["client"][0], certs["client"][1], "+cf", certs["ca"][1]]
    echo = dcmtk("echoscu", *tls, "-aec", "DICOMFS", "127.0.0.1", daemon.port)
    assert echo.returncode == 0, echo.stderr
    path = dicomgen.write(tmp_path / "a.dcm", dicomgen.make_dataset())
    store = dcmtk("storescu", *tls, "-aec", "DICOMFS", "127.0.0.1", daemon.port, path)
    assert store.returncode == 0, store.stderr
    assert len(list((daemon.data_dir / "store").rglob("*.dcm"))) == 1


def test_plain_and_foreign_clients_are_refused(tls_node: tuple[Daemon, dict[str, tuple[Path, Path]]]) -> None:
    daemon, certs = tls_node
    plain = dcmtk("echoscu", "-to", "5", "-ta", "5", "-aec", "DICOMFS", "127.0.0.1", daemon.port)
    assert plain.returncode != 0
    stranger = dcmtk("echoscu", "+tls", certs["stranger"][0], certs["stranger"][1], "+cf", certs["ca"][1],
                     "-aec", "DICOMFS", "127.0.0.1", daemon.port)
    assert stranger.returncode != 0  # its certificate was not signed by the configured CA


def test_idle_connections_do_not_hold_up_tls_peers(tls_node: tuple[Daemon, dict[str, tuple[Path, Path]]]) -> None:
    """The handshake runs in each connection's own thread, within the association timeout."""
    daemon, certs = tls_node
    idle = [socket.create_connection(("127.0.0.1", daemon.port), timeout=10) for _ in range(4)]
    try:
        start = time.monotonic()
        echo = dcmtk("echoscu", "-to", "4", "-ta", "4", "+tls", certs["client"][0], certs["client"][1],
                     "+cf", certs["ca"][1], "-aec", "DICOMFS", "127.0.0.1", daemon.port)
        assert echo.returncode == 0, echo.stderr
        assert time.monotonic() - start < 3
        for sock in idle:  # dropped at the association timeout (5 s), not held for ever
            assert sock.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
    assert "TLS handshake failed (timed out)" in daemon.log()


def test_a_remote_that_requires_tls_is_queried_and_retrieved_from(
        tls_node: tuple[Daemon, dict[str, tuple[Path, Path]]], tmp_path: Path) -> None:
    """Our SCU against a node that takes TLS only (our own node, with the certificates above)."""
    daemon, certs = tls_node
    ds = dicomgen.make_dataset()
    path = dicomgen.write(tmp_path / "a.dcm", ds)
    tls = ["+tls", certs["client"][0], certs["client"][1], "+cf", certs["ca"][1]]
    assert dcmtk("storescu", *tls, "-aec", "DICOMFS", "127.0.0.1", daemon.port, path).returncode == 0
    remote = RemoteNode(name="secure", ae_title="DICOMFS", host="127.0.0.1", port=daemon.port, timeout=10,
                        tls=True, ca=str(certs["ca"][1]), cert=str(certs["client"][1]), key=str(certs["client"][0]))
    scu.echo(remote, calling_ae="CLIENT", timeout=10)
    keys = {"StudyInstanceUID": ds.StudyInstanceUID, "SeriesInstanceUID": ds.SeriesInstanceUID}
    [found] = scu.find(remote, "IMAGE", {**keys, "SOPInstanceUID": ""}, calling_ae="CLIENT", timeout=10)
    assert found.SOPInstanceUID == ds.SOPInstanceUID
    received: list[bytes] = []
    result = scu.get(remote, "SERIES", keys, calling_ae="CLIENT", timeout=10, sop_classes=[ds.SOPClassUID],
                     on_instance=received.append)
    assert result.completed == 1
    [data] = received
    assert data.endswith(path.read_bytes()[-len(ds.PixelData):])  # the same bytes, through TLS

    for refused in (replace(remote, tls=False, ca="", cert="", key=""),  # plain to a TLS-only node
                    replace(remote, cert="", key="")):  # TLS, but no client certificate for a node that asks
        started = time.monotonic()
        with pytest.raises(scu.RemoteError):
            scu.echo(refused, calling_ae="CLIENT", timeout=3)
        assert time.monotonic() - started < 8
