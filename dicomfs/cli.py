"""Command line: ``dicomfs import``, ``serve``, ``remote``, ``status``; options shared by every command."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from dicomfs import __version__, config, privacy
from dicomfs.errors import user_errors

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
    imp.add_argument("--create", action="store_true", help="create the archive if --data-dir does not exist")

    srv = sub.add_parser("serve", parents=[common], help="run the daemon: mount the archive",
                         description="Run in the foreground until Ctrl-C or SIGTERM, which unmount cleanly.")
    srv.add_argument("--mount", type=Path, metavar="DIR", help="mount point (default: ~/dicom)")
    srv.add_argument("--no-mount", action="store_true", help="do not mount the archive")
    srv.add_argument("--ae-title", metavar="AET", help="our DICOM AE title (default: DICOMFS)")
    srv.add_argument("--port", type=int, metavar="N", help="DICOM port, 1 to 65535 (default: 11112)")
    srv.add_argument("--bind", metavar="ADDR",
                     help="address the DICOM node listens on (default: 127.0.0.1, local tools only; "
                          "any other address needs peers declared in [dicom.allow], see docs/dicom.md)")
    srv.add_argument("--no-dicom", action="store_true", help="do not run the DICOM node")
    srv.add_argument("--create", action="store_true", help="create the archive if --data-dir does not exist")

    init = sub.add_parser("init", parents=[common], help="create a new, empty archive",
                          description="Create an archive at DIR (or --data-dir, or the default) with private "
                                      "modes (see 'group' in docs/configuration.md). DIR must not exist or be "
                                      "an empty folder.")
    init.add_argument("dir", nargs="?", type=Path, metavar="DIR")

    _remote_parser(sub, common)
    _organise_parser(sub, common)
    sub.add_parser("status", parents=[common], help="what the archive holds, cache use, retrieves in flight",
                   description="Counts from the index, the cache of fetched remote data, and the retrieves a "
                               "running daemon has in flight.")
    return parser


_SELECTOR_HELP = ("a UID (Study or Series Instance UID; Patient ID at patient level) or a query, "
                  "e.g. 'Modality=PT and StudyDate>=20240101' (see docs/research.md)")


def _organise_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    proj = sub.add_parser("project", parents=[common], help="projects: create, add, remove, list, delete")
    actions = proj.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", parents=[common], help="create a project")
    create.add_argument("name")
    create.add_argument("--description", default="")
    delete = actions.add_parser("delete", parents=[common], help="delete a project (its images stay)")
    delete.add_argument("name")
    actions.add_parser("list", parents=[common], help="projects and how many members each has")
    for action, verb in (("add", "assign"), ("remove", "unassign")):
        member = actions.add_parser(action, parents=[common], help=f"{verb} patients, studies or series")
        member.add_argument("name")
        member.add_argument("selectors", nargs="+", metavar="SELECTOR", help=_SELECTOR_HELP)
        member.add_argument("--level", choices=["patient", "study", "series"], default="study")
    fnd = sub.add_parser("find", parents=[common], help="structured queries over the archive",
                         description="Examples: 'Modality=PT and StudyDate>=20240101', 'tag:diagnosis=AD', "
                                     "'project:TRIAL1 and not has:derived'. See docs/research.md.")
    fnd.add_argument("query", nargs="?", default="", metavar="QUERY")
    fnd.add_argument("--level", choices=["patient", "study", "series", "instance"], default="study")
    shape = fnd.add_mutually_exclusive_group()
    shape.add_argument("--json", dest="output", action="store_const", const="json", help="one JSON object per line")
    shape.add_argument("--paths", dest="output", action="store_const", const="paths",
                       help="mount paths, one per line (for xargs)")
    shape.add_argument("--count", dest="output", action="store_const", const="count", help="only how many")
    fnd.add_argument("--mount", type=Path, metavar="DIR", help="the mount point the paths start with")
    fnd.add_argument("--limit", type=int, metavar="N")
    drv = sub.add_parser("derive", parents=[common], help="derived data linked to a study or series")
    drv_actions = drv.add_subparsers(dest="action", metavar="ACTION", required=True)
    dadd = drv_actions.add_parser("add", parents=[common], help="store files as derived data of one study or series")
    dadd.add_argument("selector", metavar="SELECTOR", help=_SELECTOR_HELP)
    dadd.add_argument("files", nargs="+", type=Path, metavar="FILE")
    dadd.add_argument("--level", choices=["study", "series"], default="series")
    dadd.add_argument("--kind", choices=["voi", "stats", "fit", "map", "other"], default="other")
    dlist = drv_actions.add_parser("list", parents=[common], help="derived data of studies or series")
    dlist.add_argument("selector", nargs="?", metavar="SELECTOR", help=_SELECTOR_HELP)
    dlist.add_argument("--level", choices=["study", "series"], default="series")
    dlist.add_argument("--orphaned", action="store_true",
                       help="derived data whose origin was deleted (instead of a selector)")
    dele = sub.add_parser("delete", parents=[common], help="delete patients, studies or series from the archive",
                          description="Derived data made from what is deleted stays, listed as orphaned.")
    dele.add_argument("selectors", nargs="+", metavar="SELECTOR", help=_SELECTOR_HELP)
    dele.add_argument("--level", choices=["patient", "study", "series"], default="study")
    dele.add_argument("--yes", action="store_true", help="delete; without it, only say what would be deleted")
    tag = sub.add_parser("tag", parents=[common], help="tags (KEY=VALUE) on patients, studies, series, instances")
    tag_actions = tag.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, what in (("set", "KEY=VALUE"), ("unset", "KEY"), ("list", None)):
        cmd = tag_actions.add_parser(action, parents=[common], help=f"{action} tags")
        cmd.add_argument("selector", metavar="SELECTOR", help=_SELECTOR_HELP)
        if what:
            cmd.add_argument("tag", metavar=what)
        cmd.add_argument("--level", choices=["patient", "study", "series", "instance"], default="study")


_TERMS_HELP = ("what to match, in the query language of 'dicomfs find' as far as C-FIND can express it, e.g. "
               "'Modality=CT and StudyDate>=20240101 and PatientName=DOE*': = with * and ? wildcards, >= and <= "
               "on dates and times, 'or' between UIDs (see docs/remote.md)")


class _IntermixedParser(argparse.ArgumentParser):
    """Query words may come before or after options (``remote query pacs --level series PatientID=1``)."""

    _intermixing = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing:  # argparse's intermixed parsing calls this twice itself
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _remote_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    rem = sub.add_parser("remote", parents=[common], help="remote PACS: add, list, query, pull",
                         description="Remote DICOM nodes live in the configuration file ([[dicom.remotes]]); "
                                     "these commands edit it and talk to them. Exit status 2 for a mistake "
                                     "(unknown remote, bad terms, AE title refused), 1 when the remote is down, "
                                     "silent or fails.")
    actions = rem.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=_IntermixedParser)
    add = actions.add_parser("add", parents=[common], help="add a remote node to the configuration")
    add.add_argument("name")
    add.add_argument("--aet", required=True, metavar="AET", help="its AE title")
    add.add_argument("--host", required=True)
    add.add_argument("--port", type=int, default=104)
    add.add_argument("--retrieve", choices=["get", "move"], default="get",
                     help="C-GET on our association (default), or C-MOVE to our own AE title")
    add.add_argument("--listing", action="append", default=[], metavar="QUERY",
                     help="a saved query naming the studies to show in the tree, in the query language "
                          "(see 'dicomfs remote query --help'), e.g. 'Modality=PT and StudyDate>=20240101' "
                          "(repeatable)")
    add.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    rm = actions.add_parser("remove", parents=[common], help="remove a remote node from the configuration")
    rm.add_argument("name")
    actions.add_parser("list", parents=[common], help="the configured remote nodes")
    echo = actions.add_parser("echo", parents=[common], help="C-ECHO a remote node")
    echo.add_argument("name")
    q = actions.add_parser("query", parents=[common], help="C-FIND on a remote node",
                           description="QUERY: " + _TERMS_HELP + ". Series and image queries walk the "
                                       "remote's studies and series where it answers hierarchical queries only. "
                                       "The old form, KEYWORD=VALUE words with DICOM values "
                                       "(StudyDate=20240101-), still works, with a warning.")
    q.add_argument("name")
    q.add_argument("terms", nargs="*", metavar="QUERY")
    q.add_argument("--level", choices=["study", "series", "image"], default="study")
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    ref = actions.add_parser("refresh", parents=[common], help="run a remote's saved queries now")
    ref.add_argument("name")
    pull = actions.add_parser("pull", parents=[common], help="retrieve a study or series into the archive now")
    pull.add_argument("name")
    pull.add_argument("--study", required=True, metavar="UID")
    pull.add_argument("--series", metavar="UID")
    pull.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)


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
    privacy.restrict(settings.group or None)  # before any file is made: everything it creates is private
    _setup_logging(settings.log_level, quiet_dicom=args.command in ("import", "serve", "remote"))
    try:
        if args.command == "init":
            return _init(settings, args)
        if args.command == "import":
            return _import(settings, args)
        if args.command == "remote":
            return _remote(settings, args)
        if args.command == "status":
            return _status(settings)
        if args.command in ("project", "tag"):
            return _organise(settings, args)
        if args.command == "find":
            return _find(settings, args)
        if args.command == "derive":
            return _derive(settings, args)
        if args.command == "delete":
            return _delete(settings, args)
        return _serve(settings, args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        mistakes = user_errors(exc)
        if mistakes is not None:
            for mistake in mistakes:
                print(f"dicomfs: {mistake}", file=sys.stderr)
            return 2
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


def _setup_logging(level: str, quiet_dicom: bool) -> None:
    # Under systemd the journal adds time stamps itself.
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    if level != "DEBUG":  # pynetdicom logs every association and dumps identifiers at INFO
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        # Failed connections are reported by our callers, with the remote's name.
        logging.getLogger("pynetdicom.transport").setLevel(logging.CRITICAL)
    if quiet_dicom:  # commands that parse DICOM; others spare pydicom's import time
        from dicomfs.parse import quiet_pydicom

        quiet_pydicom()


def _import(settings: config.Settings, args: argparse.Namespace) -> int:
    from dicomfs.ingest.files import run_import

    missing = [p for p in args.paths if not p.exists()]
    for path in missing:
        print(f"dicomfs: {path}: no such file or directory", file=sys.stderr)
    if missing:
        return 2
    archive = _open_archive(settings, create=args.create)
    try:
        report = run_import(
            archive, args.paths, workers=args.workers or settings.import_.workers,
            batch=settings.import_.batch, progress=args.progress,
        )
    finally:
        archive.close()
    print(report.summary())  # each rejection was logged once as it happened
    return 0 if report.ok else 1


def _remote(settings: config.Settings, args: argparse.Namespace) -> int:
    from dicomfs.commands import remote as remote_commands
    from dicomfs.index.query_language import QuerySyntaxError
    from dicomfs.net import scu

    calling = settings.dicom.ae_title
    if settings.log_level != "DEBUG":  # rejections and timeouts: our one line says it, with the remote's name
        logging.getLogger("pynetdicom.acse").setLevel(logging.CRITICAL)
    try:
        if args.action == "add":
            path = remote_commands.config_path(settings, args.config)
            remote = config.RemoteNode(name=args.name, ae_title=args.aet, host=args.host, port=args.port,
                                       retrieve=args.retrieve, listing=args.listing, timeout=args.timeout)
            remote_commands.add(path, remote, settings)
            print(f"added remote {args.name} ({args.aet} at {args.host}:{args.port}) to {path}")
            return 0
        if args.action == "remove":
            path = remote_commands.config_path(settings, args.config)
            remote_commands.remove(path, args.name)
            print(f"removed remote {args.name} from {path}")
            return 0
        if args.action == "list":
            for r in settings.dicom.remotes:
                saved = "; ".join(r.listing) or "-"
                print(f"{r.name}\t{r.ae_title}@{r.host}:{r.port}\tretrieve={r.retrieve}\tlisting: {saved}")
            return 0
        remote = settings.dicom.remote(args.name)
        if remote is None:
            known = ", ".join(r.name for r in settings.dicom.remotes) or "none configured"
            raise remote_commands.CommandError(f"no remote named {args.name!r} (known: {known}; add one with "
                                               f"'dicomfs remote add')")
        if args.action == "echo":
            scu.echo(remote, calling_ae=calling, timeout=remote.timeout)
            print(f"{remote.name}: C-ECHO succeeded")
            return 0
        if args.action == "query":
            count = remote_commands.query(remote, args.level.upper(), args.terms, calling, args.json, sys.stdout,
                                          sys.stderr)
            if not args.json:
                print(f"{count} {args.level} answers from {remote.name}", file=sys.stderr)
            return 0
        archive = _open_archive(settings)
        try:
            if args.action == "refresh":
                new = remote_commands.refresh(archive, remote, calling)
                print(f"{remote.name}: saved queries run, {new} new studies")
                return 0
            result = remote_commands.pull(archive, remote, args.study, args.series, settings, args.progress)
        finally:
            archive.close()
        print(f"{remote.name}: {result.completed} instances retrieved, {result.failed} failed, "
              f"{result.warning} with warnings")
        return 0 if result.failed == 0 else 1
    except QuerySyntaxError as exc:  # its text ends with the query and a caret under the error, as for find
        print(f"dicomfs: {exc}", file=sys.stderr)
        return 2
    except scu.RemoteRefusedError as exc:  # an AE title to correct: a mistake (UserError)
        print(f"dicomfs: {exc}", file=sys.stderr)
        return 2
    except scu.RemoteError as exc:  # down, silent, or a failure status: the remote's side
        print(f"dicomfs: {exc}", file=sys.stderr)
        return 1


def _organise(settings: config.Settings, args: argparse.Namespace) -> int:
    from dicomfs.commands.output import counted
    from dicomfs.index import organise as org

    archive = _open_archive(settings)
    db = archive.db
    try:
        if args.command == "project":
            if args.action == "create":
                org.create_project(db, args.name, args.description)
                print(f"created project {args.name}")
            elif args.action == "delete":
                org.delete_project(db, args.name)
                print(f"deleted project {args.name} (no images were removed)")
            elif args.action == "list":
                for project in org.list_projects(db):
                    members = ", ".join(counted(n, level) for level, n in sorted(project.members.items())) or "empty"
                    print(f"{project.name}\t{members}\t{project.description}".rstrip())
            else:
                ids = org.select(db, args.level, args.selectors)
                if args.action == "add":
                    n = org.add_members(db, args.name, args.level, ids)
                    already = f", {counted(len(ids) - n, args.level)} already in it" if len(ids) > n else ""
                    print(f"{args.name}: {counted(n, args.level)} added{already}")
                else:
                    n = org.remove_members(db, args.name, args.level, ids)
                    print(f"{args.name}: {counted(n, args.level)} removed")
            return 0
        ids = org.select(db, args.level, [args.selector])
        if args.action == "set":
            key, value = org.parse_tag(args.tag)
            org.set_tag(db, args.level, ids, key, value)
            print(f"{key}={value} set on {counted(len(ids), args.level)}")
        elif args.action == "unset":
            key, _ = org.parse_tag(args.tag, with_value=False)
            print(f"{key} removed from {counted(org.unset_tag(db, args.level, ids, key), args.level)}")
        else:
            for entity_id in ids:
                tags = org.tags_of(db, args.level, entity_id)
                pairs = " ".join(f"{k}={v}" for k, v in tags.items()) or "-"
                print(f"{org.uid_of(db, args.level, entity_id)}\t{pairs}")
        return 0
    except (org.OrganiseError, ValueError) as exc:
        print(f"dicomfs: {exc}", file=sys.stderr)
        return 2
    finally:
        archive.close()


def _find(settings: config.Settings, args: argparse.Namespace) -> int:
    from dicomfs.commands.find import find
    from dicomfs.index.db import Database

    if not settings.index_path.exists():
        print(f"dicomfs: no archive at {settings.data_dir}", file=sys.stderr)
        return 2
    db = Database(settings.index_path, readonly=True)
    try:
        count = find(db, args.query, args.level, args.output or "table", args.mount or settings.mount.path,
                     sys.stdout, args.limit)
    except ValueError as exc:  # QuerySyntaxError's text ends with the query and a caret under the error
        print(f"dicomfs: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()
    return 0 if count or args.output == "count" else 1


def _derive(settings: config.Settings, args: argparse.Namespace) -> int:
    from dicomfs.commands.output import counted
    from dicomfs.derived import DerivedError, DerivedStore
    from dicomfs.index import organise as org

    archive = _open_archive(settings)
    store = DerivedStore(settings.derived_path, archive.db)
    try:
        if args.action == "list" and args.orphaned:
            return _list_orphans(archive.db, args.selector)
        if args.selector is None:
            print("dicomfs: a selector is needed (or --orphaned)", file=sys.stderr)
            return 2
        ids = org.select(archive.db, args.level, [args.selector])
        if args.action == "list":
            for entity_id in ids:
                for item in archive.db.query(
                        "SELECT name, kind, size, origin_uid FROM derived WHERE level = ? AND entity_id = ? "
                        "ORDER BY name", (args.level, entity_id)):
                    print("\t".join(map(str, item)))
            return 0
        if len(ids) != 1:
            print(f"dicomfs: the selector names {counted(len(ids), args.level)}; derived data needs exactly one",
                  file=sys.stderr)
            return 2
        for path in args.files:
            temp = store.temp_path()
            shutil.copyfile(path, temp)
            item = store.commit(args.level, ids[0], path.name, temp, kind=args.kind)
            print(f"{path.name}: stored as derived {item.kind} data of {args.level} {item.origin_uid}")
        return 0
    except (org.OrganiseError, DerivedError, ValueError) as exc:
        print(f"dicomfs: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"dicomfs: {exc}", file=sys.stderr)
        return 1
    finally:
        archive.close()


def _list_orphans(db: Any, origin_uid: str | None) -> int:
    """Derived items whose origin was deleted: name, kind, size, origin level and UID, deletion time, path."""
    from dicomfs.commands.output import print_table

    rows = db.query(
        "SELECT name, kind, size, level, origin_uid, datetime(origin_deleted_at, 'unixepoch') FROM derived "
        "WHERE origin_deleted_at IS NOT NULL AND (? IS NULL OR origin_uid = ?) ORDER BY origin_uid, name",
        (origin_uid, origin_uid))
    columns = ["name", "kind", "size", "origin", "origin UID", "origin deleted (UTC)"]
    print_table([dict(zip(columns, row, strict=True)) for row in rows], columns, sys.stdout)
    return 0 if rows else 1


def _delete(settings: config.Settings, args: argparse.Namespace) -> int:
    from dicomfs import deletion
    from dicomfs.index import organise as org

    archive = _open_archive(settings)
    try:
        ids = org.select(archive.db, args.level, args.selectors)
        if not args.yes:
            plan = deletion.plan(archive.db, args.level, ids)
            print(f"would delete {plan.patients} patients, {plan.studies} studies, {plan.series} series, "
                  f"{plan.instances} instances; {plan.orphaned} derived items would stay, orphaned. "
                  "Add --yes to delete.")
            return 1
        done = deletion.delete(archive.db, archive.store, args.level, ids)
        print(f"deleted {done.patients} patients, {done.studies} studies, {done.series} series, "
              f"{done.instances} instances; {done.orphaned} derived items stay, orphaned "
              "(dicomfs derive list --orphaned)")
        return 0
    except org.OrganiseError as exc:
        print(f"dicomfs: {exc}", file=sys.stderr)
        return 2
    finally:
        archive.close()


def _open_archive(settings: config.Settings, *, create: bool = False) -> Any:
    """The archive for writing; a missing --data-dir is an error unless asked to create it."""
    from dicomfs.archive import open_archive

    return open_archive(settings.data_dir, settings.rules, create=create or settings.data_dir_is_default,
                        group=settings.group or None)


def _init(settings: config.Settings, args: argparse.Namespace) -> int:
    from dicomfs.archive import INDEX_NAME, NotAnArchiveError, open_archive

    data_dir = args.dir or settings.data_dir
    if (data_dir / INDEX_NAME).exists():
        raise NotAnArchiveError(f"{data_dir} is already a dicomfs archive: nothing to do")
    open_archive(data_dir, settings.rules, create=True, group=settings.group or None).close()
    who = f"the owner and group {settings.group}" if settings.group else "the owner only"
    print(f"created an empty archive at {data_dir} (readable by {who})")
    return 0


def _status(settings: config.Settings) -> int:
    from dicomfs.commands.status import report

    print(report(settings))
    return 0


def _serve(settings: config.Settings, args: argparse.Namespace) -> int:
    from dicomfs.daemon import serve

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
    if args.bind is not None:
        settings.dicom.bind = args.bind
    if settings.dicom.enabled:
        config.check_dicom(settings.dicom)  # --port and --bind, before anything starts
    serve(settings, create=args.create)  # a MountError, like every UserError, is one line and exit 2 (in main)
    return 0
