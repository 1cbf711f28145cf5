"""Mistakes in where the node listens: each is one line from the real ``dicomfs serve``, exit 2."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import DICOMFS, Daemon, cli_env, free_port


def _serve(tmp_path: Path, *args: str | Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``dicomfs serve`` with its archive in ``tmp_path`` (the default location, created on first use)."""
    env = {**cli_env(), "XDG_DATA_HOME": str(tmp_path / "xdg-data")}
    return subprocess.run([*prefix, *DICOMFS, "serve", "--mount", str(tmp_path / "mnt"), *map(str, args)],
                          capture_output=True, text=True, timeout=60, env=env)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("dicomfs: ")]
    assert len(said) == 1, result.stderr
    return said[0]


def _nothing_left(tmp_path: Path) -> None:
    assert not os.path.ismount(tmp_path / "mnt")


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_line(_serve(tmp_path, "--port", str(port)))
    assert line == (f"dicomfs: cannot listen for DICOM on 127.0.0.1:{port}: the port is in use (another dicomfs "
                    "or DICOM node?); choose another with --port, or run without the node with --no-dicom")
    _nothing_left(tmp_path)


@pytest.mark.parametrize("port", ["70000", "0", "-1"])
def test_port_out_of_range_on_the_command_line(tmp_path: Path, port: str) -> None:
    line = _one_line(_serve(tmp_path, "--no-mount", "--port", port))
    assert line == f"dicomfs: --port {port} is out of range: give a port from 1 to 65535 (11112 is usual)"


def test_port_out_of_range_in_the_configuration(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[dicom]\nport = 65536\n")
    line = _one_line(_serve(tmp_path, "--no-mount", "--config", config))
    assert line == (f"dicomfs: {config} [dicom]: port = 65536 is out of range: give a port from 1 to 65535 "
                    "(11112 is usual)")


def test_bind_address_that_does_not_resolve(tmp_path: Path) -> None:
    line = _one_line(_serve(tmp_path, "--bind", "no-such-host.invalid", "--port", str(free_port())))
    assert line == ("dicomfs: cannot listen on 'no-such-host.invalid': no such address; give --bind (or [dicom] "
                    "bind) an address of this host, e.g. 127.0.0.1 (local tools only) or 0.0.0.0 (every interface)")
    _nothing_left(tmp_path)


def test_bind_address_of_another_host(tmp_path: Path) -> None:
    port = free_port()
    line = _one_line(_serve(tmp_path, "--no-mount", "--bind", "192.0.2.1", "--port", str(port)))
    assert line == (f"dicomfs: cannot listen for DICOM on 192.0.2.1:{port}: 192.0.2.1 is not an address of this "
                    "host; give --bind an address of this host (127.0.0.1 for local tools only, 0.0.0.0 for every "
                    "interface)")


def test_privileged_port_without_the_capability(tmp_path: Path) -> None:
    # Root without CAP_NET_BIND_SERVICE is refused ports below 1024 as any user is.
    drop = ("setpriv", "--inh-caps=-net_bind_service", "--bounding-set=-net_bind_service", "--")
    line = _one_line(_serve(tmp_path, "--no-mount", "--port", "1000", prefix=drop))
    assert line == ("dicomfs: cannot listen for DICOM on 127.0.0.1:1000: ports below 1024 need privileges; use a "
                    "port from 1024 up (e.g. --port 11112), or grant the daemon CAP_NET_BIND_SERVICE")


def test_opening_beyond_loopback_without_declared_peers(tmp_path: Path) -> None:
    port = free_port()
    line = _one_line(_serve(tmp_path, "--bind", "0.0.0.0", "--port", str(port)))
    assert line == (f"dicomfs: the DICOM node would listen on 0.0.0.0:{port}, beyond loopback, with no declared "
                    "peers: declare them in [dicom.allow] (store/query/retrieve = [\"AE@host\"]), or set allow_any "
                    "= true in [dicom] to admit anyone, or bind 127.0.0.1")
    _nothing_left(tmp_path)


def test_a_bad_allow_entry(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[dicom.allow]\nquery = ["WS1@no-such-host.invalid"]\n')
    line = _one_line(_serve(tmp_path, "--no-mount", "--config", config, "--port", str(free_port())))
    assert line == ("dicomfs: [dicom.allow] query: entry 'WS1@no-such-host.invalid': host 'no-such-host.invalid' "
                    "does not resolve: give an address, a network (10.1.2.0/24) or a resolvable name")


def test_allow_any_opens_and_warns_at_every_start(daemon: Daemon, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[dicom]\nallow_any = true\n")
    for _ in range(2):
        daemon.start("--no-mount", "--config", str(config), "--bind", "0.0.0.0")
        daemon.stop()
    warning = "admits any AE from any host to every service whose allow-list is empty (allow_any = true)"
    assert daemon.log().count(warning) == 2


def test_tls_files_that_cannot_be_read(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[dicom.tls]\ncert = "/nonexistent/node.pem"\nkey = "/nonexistent/node.key"\n')
    line = _one_line(_serve(tmp_path, "--no-mount", "--config", config, "--port", str(free_port())))
    assert line == ("dicomfs: cannot use the TLS files of [dicom.tls] (cert /nonexistent/node.pem, key "
                    "/nonexistent/node.key): No such file or directory; give PEM files this user can read")
