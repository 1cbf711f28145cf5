"""``dicomfs serve``: wiring in one place: archive, mount, change watcher, signals.

One nursery holds every task; when any of them ends (a signal, an external unmount, a
crash) the others are cancelled and the mount is released, so the daemon is never half
alive.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
from pathlib import Path

import pyfuse3
import trio

from dicomfs.archive import Archive, open_archive
from dicomfs.config import Settings
from dicomfs.derived import DerivedStore
from dicomfs.errors import UserError
from dicomfs.ingest.gateway import IndexGateway
from dicomfs.mount.operations import Operations
from dicomfs.mount.tree import Tree
from dicomfs.mount.watch import follow_changes
from dicomfs.net.scp import NodeServer
from dicomfs.remote.fetch import Fetcher
from dicomfs.volumes.cache import VolumeCache

log = logging.getLogger(__name__)


class MountError(UserError):
    """The mount point cannot be used."""


def serve(settings: Settings) -> None:
    if settings.mount.enabled:  # fail early and plainly, before anything runs
        settings.mount.path = _prepare_mount_point(settings.mount.path)
    archive = open_archive(settings.data_dir, settings.rules)
    try:
        removed = archive.store.clean_temporaries()
        if removed:
            log.info("removed %d unfinished temporary files from an earlier crash", removed)
        refreshed = archive.writer.refresh_json_sizes()
        if refreshed:
            log.info("re-measured the .json views of %d instances after an upgrade", refreshed)
        recorded = archive.writer.refresh_volume_facts()
        if recorded:
            log.info("recorded the pixel data layout of %d instances for series volumes", recorded)
        trio.run(_serve, settings, archive)
    finally:
        archive.close()


async def _serve(settings: Settings, archive: Archive) -> None:
    gateway = IndexGateway(archive.writer)  # on this loop: every index write of the daemon runs here
    fetcher = Fetcher(settings.dicom, archive.remote, archive.store, gateway, settings.status_path)
    node = _start_node(settings, archive, gateway) if settings.dicom.enabled else None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_on_signals, nursery.cancel_scope, node)
            await nursery.start(fetcher.run)
            if settings.mount.enabled:
                await nursery.start(_mount, settings, archive, fetcher, nursery.cancel_scope)
            else:
                log.info("serving without a mount (--no-mount)")
            _notify_systemd("READY=1")
    finally:
        settings.status_path.unlink(missing_ok=True)
        if node is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(node.stop)


def _start_node(settings: Settings, archive: Archive, gateway: IndexGateway) -> NodeServer:
    """The DICOM node; its association threads hand instances to the gateway for indexing.

    Raises a ``UserError`` (one line) when it cannot listen: a bad or foreign address, a
    port in use or privileged, or an opening beyond loopback with no declared peers.
    """
    node = NodeServer(settings.dicom, archive.store, gateway.submit_from_thread, settings.index_path)
    node.start()
    return node


async def _mount(
    settings: Settings, archive: Archive, fetcher: Fetcher, daemon_scope: trio.CancelScope,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    mount_point = settings.mount.path
    tree = Tree(archive.db)
    ops = Operations(tree, archive.store.root, render_threads=settings.mount.render_threads, remote=fetcher,
                     derived=DerivedStore(settings.derived_path, archive.db, archive.store.root, archive.changes),
                     volume_cache=VolumeCache(settings.volume_cache_path, int(settings.mount.volume_cache_mb * 2**20)))
    options = set(pyfuse3.default_options) | {"fsname=dicomfs", "subtype=dicomfs"}
    if settings.mount.allow_other:
        options.add("allow_other")
    pyfuse3.init(ops, str(mount_point), options)
    log.info("mounted the archive at %s", mount_point)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow_changes, archive.changes, tree, settings.poll_interval, ops.kernel)
            nursery.start_soon(_tune_read_ahead, mount_point, settings.mount.read_ahead_kb)
            task_status.started()
            await pyfuse3.main()  # returns when the mount is released from outside
            log.warning("%s was unmounted from outside; stopping", mount_point)
            daemon_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", mount_point)


def _prepare_mount_point(path: Path) -> Path:
    path = path.expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTCONN):  # a stale mount: handled below
            raise MountError(f"cannot create mount point {path}: {exc.strerror}") from exc
    if _is_dead_mount(path):
        # A daemon that was killed leaves a dead FUSE mount behind: release it.
        log.warning("%s is a stale mount left by a killed daemon; unmounting it", path)
        subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False)
    if path.exists() and not path.is_dir():
        raise MountError(f"mount point {path} is not a folder: give --mount a folder (it is created if missing)")
    if os.path.ismount(path):
        raise MountError(f"{path} is already a mount point (is another dicomfs serving it? "
                         f"stop it, or give --mount another folder)")
    try:
        if any(path.iterdir()):
            raise MountError(f"mount point {path} is not empty")
    except OSError as exc:
        raise MountError(f"cannot use mount point {path}: {exc.strerror}") from exc
    return path


def _is_dead_mount(path: Path) -> bool:
    """A FUSE mount whose daemon is gone: every request fails with ENOTCONN.

    ``stat`` is not enough: the kernel answers it from attributes it still holds, so the
    folder is listed, which always asks the (dead) daemon.
    """
    try:
        os.listdir(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


async def _tune_read_ahead(mount_point: Path, kb: int) -> None:
    """Set read-ahead once the mount answers: the kernel resets it when our INIT reply arrives."""
    if kb <= 0:
        return
    await trio.to_thread.run_sync(os.stat, mount_point)
    _set_read_ahead(mount_point, kb)


def _set_read_ahead(mount_point: Path, kb: int) -> None:
    """Raise the mount's kernel read-ahead (root only); measured 0.51 → 0.72 of native."""
    device = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(mount_point):
                device = fields[2]
    if device is None:
        return
    try:
        Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text(str(kb))
    except OSError as exc:
        log.debug("cannot set read-ahead for %s: %s", mount_point, exc)


async def _on_signals(cancel_scope: trio.CancelScope, node: NodeServer | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            _notify_systemd("STOPPING=1")
            if node is not None:  # no association may outlive the loop it hands work to
                await trio.to_thread.run_sync(node.stop)
            cancel_scope.cancel()
            return


def _notify_systemd(message: str) -> None:
    """sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET, if there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError as exc:
            log.warning("cannot notify systemd: %s", exc)
