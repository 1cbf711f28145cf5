"""Command line: ``dicomfs import``, ``dicomfs serve``; options shared by every command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from dicomfs import __version__, config

log = logging.getLogger("dicomfs")


def _common_options(default: object) -> argparse.ArgumentParser:
    """Options every command takes, before or after the command name.

    Subcommands use ``argparse.SUPPRESS`` as default so that an option given before the
    command name is not overwritten by the subcommand's default.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, metavar="DIR", default=default,
                        help="archive location (default: $XDG_DATA_HOME/dicomfs)")
    common.add_argument("--config", type=Path, metavar="FILE", default=default,
                        help="TOML configuration (default: $DICOMFS_CONFIG or $XDG_CONFIG_HOME/dicomfs/config.toml)")
    common.add_argument("--log-level", metavar="LEVEL", type=str.upper, default=default,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="DEBUG, INFO, WARNING or ERROR")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options(argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="dicomfs", parents=[_common_options(None)],
        description="A DICOM archive that you use as a filesystem.",
        epilog="Run 'dicomfs COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"dicomfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    imp = sub.add_parser("import", parents=[common], help="add DICOM files and folders to the archive",
                         description="Import files, folders (recursively) and DICOMDIR media. Files that are "
                                     "not DICOM are skipped; malformed ones are reported and left out. "
                                     "Exit status 1 when any file was rejected.")
    imp.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    imp.add_argument("--workers", type=int, metavar="N", help="parser processes (default: one per CPU)")
    imp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="show a progress bar (default: when stderr is a terminal)")

    srv = sub.add_parser("serve", parents=[common], help="run the daemon: mount the archive",
                         description="Run in the foreground until Ctrl-C or SIGTERM, which unmount cleanly.")
    srv.add_argument("--mount", type=Path, metavar="DIR", help="mount point (default: ~/dicom)")
    srv.add_argument("--no-mount", action="store_true", help="do not mount the archive")
    srv.add_argument("--ae-title", metavar="AET", help="our DICOM AE title (default: DICOMFS)")
    srv.add_argument("--port", type=int, metavar="N", help="DICOM port (default: 11112)")
    srv.add_argument("--bind", metavar="ADDR", help="address to listen on (default: 0.0.0.0)")
    srv.add_argument("--no-dicom", action="store_true", help="do not run the DICOM node")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = config.load(args.config)
    except config.ConfigError as exc:
        print(f"dicomfs: {exc}", file=sys.stderr)
        return 2
    if args.data_dir:
        settings.data_dir = args.data_dir
    if args.log_level:
        settings.log_level = args.log_level
    _setup_logging(settings.log_level)
    try:
        if args.command == "import":
            return _import(settings, args)
        return _serve(settings, args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if settings.log_level == "DEBUG":
            raise
        for leaf in _leaves(exc):
            print(f"dicomfs: {type(leaf).__name__}: {leaf}", file=sys.stderr)
        return 1


def _leaves(exc: BaseException) -> list[BaseException]:
    """The errors inside (nested) exception groups, which trio's nurseries produce."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _setup_logging(level: str) -> None:
    # Under systemd the journal adds time stamps itself.
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    from dicomfs.parse import quiet_pydicom

    quiet_pydicom()


def _import(settings: config.Settings, args: argparse.Namespace) -> int:
    from dicomfs.archive import open_archive
    from dicomfs.importer import run_import

    missing = [p for p in args.paths if not p.exists()]
    for path in missing:
        print(f"dicomfs: {path}: no such file or directory", file=sys.stderr)
    if missing:
        return 2
    archive = open_archive(settings.data_dir)
    try:
        report = run_import(
            archive, args.paths, workers=args.workers or settings.import_.workers,
            batch=settings.import_.batch, progress=args.progress,
        )
    finally:
        archive.close()
    for path, reason in report.rejected:
        print(f"rejected {path}: {reason}", file=sys.stderr)
    print(report.summary())
    return 0 if report.ok else 1


def _serve(settings: config.Settings, args: argparse.Namespace) -> int:
    from dicomfs.daemon import MountError, serve

    if args.mount:
        settings.mount.path = args.mount
    if args.no_mount:
        settings.mount.enabled = False
    if args.no_dicom:
        settings.dicom.enabled = False
    if args.ae_title:
        settings.dicom.ae_title = args.ae_title
    if args.port is not None:
        settings.dicom.port = args.port
    if args.bind:
        settings.dicom.bind = args.bind
    try:
        serve(settings)
    except MountError as exc:
        print(f"dicomfs: {exc}", file=sys.stderr)
        return 1
    return 0
