"""Settings: embedded defaults, overridden by a TOML file, overridden by the command line.

The file is looked up at ``--config``, else ``$DICOMFS_CONFIG``, else
``$XDG_CONFIG_HOME/dicomfs/config.toml`` (when it exists). Unknown keys are an error, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dicomfs.errors import UserError


class ConfigError(UserError, ValueError):
    """The configuration file is unreadable or has a wrong key or value."""


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback)


@dataclass(slots=True)
class MountSettings:
    path: Path = field(default_factory=lambda: Path.home() / "dicom")
    enabled: bool = True
    allow_other: bool = False  # let other users read the mount (needs user_allow_other unless root)
    read_ahead_kb: int = 1024  # kernel read-ahead for the mount (root only); 1 MiB measured best
    render_threads: int = 2  # concurrent .jpg/.json renderings
    volume_cache_mb: float = 4096.0  # decoded volumes (compressed, per-slice rescale); least recently used go first


@dataclass(slots=True)
class ImportSettings:
    workers: int = 0  # parser processes; 0 = one per CPU
    batch: int = 64  # instances per index transaction


@dataclass(slots=True)
class RemoteNode:
    """A DICOM node we know by name: a C-MOVE destination, and a PACS we can query and retrieve from."""

    name: str = ""
    ae_title: str = ""
    host: str = ""
    port: int = 104
    retrieve: str = "get"  # "get": C-GET on our association; "move": C-MOVE to our own AE title
    # Saved queries: each names remote studies to show in the tree, in the query language as
    # far as C-FIND carries it (remote/terms.py, e.g. "StudyDate>=20240101 and Modality=CT"). Empty: none shown.
    listing: list[str] = field(default_factory=list)
    timeout: float = 30.0  # seconds for any one request to this node, and for an open() to fetch
    associations: int = 4  # C-GET associations at once for one series (the remote must accept as many)
    tls: bool = False  # DICOM TLS (PS3.15 BCP 195) to this node
    ca: str = ""  # TLS: the CA that signed the node's certificate (default: the system's)
    cert: str = ""  # TLS: our client certificate and its key, for a node that asks for one
    key: str = ""


@dataclass(slots=True)
class ProjectRule:
    """Routes arriving studies into a project: ``match`` is a query, ``calling_ae`` the sender."""

    project: str = ""
    match: str = ""  # in the query language, evaluated at study level; empty: any study
    calling_ae: str = ""  # only data received from this AE title; empty: any source


@dataclass(slots=True)
class AllowSettings:
    """Who may use each service group. Entries: "AE", "AE@host", "*" (any AE), "*@host".

    A host is an address, a network ("10.1.2.0/24") or a name resolved at start. On loopback
    an empty list admits every local caller; beyond loopback it admits nobody unless
    ``[dicom] allow_any`` is true. Configured remotes may always store (C-MOVE results).
    """

    store: list[str] = field(default_factory=list)
    query: list[str] = field(default_factory=list)
    retrieve: list[str] = field(default_factory=list)

    def declared(self) -> bool:
        return bool(self.store or self.query or self.retrieve)


@dataclass(slots=True)
class TlsSettings:
    """DICOM TLS (PS3.15 BCP 195): on when cert and key are set."""

    cert: str = ""
    key: str = ""
    ca: str = ""  # when set, peers must present a certificate signed by it


@dataclass(slots=True)
class DicomSettings:
    enabled: bool = True
    ae_title: str = "DICOMFS"
    port: int = 11112
    bind: str = "127.0.0.1"  # loopback: local tools only; any other address is a deliberate opening
    allow_any: bool = False  # beyond loopback, let empty allow-lists admit anyone (warned at every start)
    check_called_ae: bool = False  # refuse associations addressed to another AE title than ours
    max_associations: int = 16  # established associations; connections still negotiating do not count
    max_pending: int = 64  # connections waiting for their A-ASSOCIATE-RQ; the oldest is dropped beyond
    association_timeout: float = 5.0  # seconds from connect (and TLS handshake) to a complete A-ASSOCIATE-RQ
    # Largest P-DATA PDU we accept, advertised to peers; larger ones abort the association.
    # 1 MiB measured as fast as unlimited (see docs/dicom.md); 0 advertises no limit.
    max_pdu: int = 1_048_576
    max_object_mb: float = 1024.0  # largest DIMSE message (one object) an association may send us
    parse_workers: int = 2  # processes that parse received instances; 0: each association's own thread
    network_timeout: float = 60.0
    fold_names: bool = True  # C-FIND person names match without regard to case (Unicode case folding)
    allow: AllowSettings = field(default_factory=AllowSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    remotes: list[RemoteNode] = field(default_factory=list)
    refresh_minutes: float = 15.0  # how often saved remote queries are run again (0: only on demand)
    relist_minutes: float = 5.0  # a remote study entered this long after its series were listed: list them again
    cache_mb: float = 10_240.0  # fetched remote data kept locally; least recently used series are evicted

    def remote(self, name: str) -> RemoteNode | None:
        return next((r for r in self.remotes if r.name == name), None)

    def remote_by_ae(self, ae_title: str) -> RemoteNode | None:
        return next((r for r in self.remotes if r.ae_title == ae_title), None)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def default_data_dir() -> Path:
    """The embedded default archive, in the user's home: the one path created on first use."""
    return _xdg("XDG_DATA_HOME", ".local/share") / "dicomfs"


@dataclass(slots=True)
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    log_level: str = "INFO"  # one of LOG_LEVELS
    # Who may read the archive on disk besides its owner: a group name (files 0640, folders
    # 0750 and setgid); empty: the owner only (0600/0700).
    group: str = ""
    poll_interval: float = 0.25  # seconds between checks for index changes made by other processes
    mount: MountSettings = field(default_factory=MountSettings)
    import_: ImportSettings = field(default_factory=ImportSettings)
    dicom: DicomSettings = field(default_factory=DicomSettings)
    rules: list[ProjectRule] = field(default_factory=list)  # [[rules]]: automatic project membership
    source: Path | None = None  # the file these settings were read from

    @property
    def index_path(self) -> Path:
        return self.data_dir / "index.sqlite"

    @property
    def derived_path(self) -> Path:
        """Derived data written into the mount's derived/ folders or added with ``dicomfs derive add``."""
        return self.data_dir / "derived"

    @property
    def volume_cache_path(self) -> Path:
        """Series volumes that had to be decoded (compressed or rescaled per slice), as NIfTI files."""
        return self.data_dir / "cache" / "volumes"

    @property
    def status_path(self) -> Path:
        """Written by a running daemon: its retrieves in flight (read by ``dicomfs status``)."""
        return self.data_dir / "daemon-status.json"

    @property
    def pid_path(self) -> Path:
        """Held locked by a running daemon: its pid, mount point and DICOM address."""
        return self.data_dir / "daemon.pid"

    @property
    def dicom_address(self) -> str:
        """``AE@host:port``, or ``off``: what ``serve`` logs and ``status`` prints."""
        d = self.dicom
        return f"{d.ae_title}@{d.bind}:{d.port}" if d.enabled else "off"

    @property
    def data_dir_is_default(self) -> bool:
        return self.data_dir == default_data_dir()


_SECTIONS = {"mount": "mount", "import": "import_", "dicom": "dicom"}


def default_config_path() -> Path | None:
    env = os.environ.get("DICOMFS_CONFIG")
    if env:
        return Path(env)
    path = _xdg("XDG_CONFIG_HOME", ".config") / "dicomfs" / "config.toml"
    return path if path.exists() else None


def load(path: Path | None = None) -> Settings:
    """Settings from ``path`` (or the default location), on top of the embedded defaults."""
    settings = Settings()
    path = path or default_config_path()
    if path is None:
        return settings
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        source = "$DICOMFS_CONFIG" if os.environ.get("DICOMFS_CONFIG") == str(path) else "--config"
        raise ConfigError(f"configuration file {path} does not exist: check {source}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration {path} is not valid TOML: {exc}") from exc
    _apply(settings, doc, str(path), _SECTIONS)
    check_dicom(settings.dicom, f"{path} [dicom]: ")
    settings.source = path
    _check_settings(settings, str(path))
    return settings


def check_dicom(dicom: DicomSettings, where: str = "") -> None:
    """Refuse node settings that cannot work, before anything listens.

    ``where`` prefixes the message: the file and section, or "" for command line values
    (whose messages name the option).
    """
    port, bind = ("port =", "bind =") if where else ("--port", "--bind")
    if not 1 <= dicom.port <= 65535:
        raise ConfigError(f"{where}{port} {dicom.port} is out of range: give a port from 1 to 65535 (11112 is usual)")
    if not dicom.bind.strip():
        raise ConfigError(f"{where}{bind} is empty: give an address of this host "
                          "(127.0.0.1 for local tools only, 0.0.0.0 for every interface)")
    positive = {"max_associations": dicom.max_associations, "max_pending": dicom.max_pending,
                "association_timeout": dicom.association_timeout, "network_timeout": dicom.network_timeout,
                "max_object_mb": dicom.max_object_mb}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{where}{key} = {value} must be greater than 0")
    if dicom.parse_workers < 0:
        raise ConfigError(f"{where}parse_workers = {dicom.parse_workers} must be 0 (parse in the node's threads) "
                          "or more")
    if dicom.max_pdu != 0 and not 4096 <= dicom.max_pdu <= 0xFFFFFFFF:
        raise ConfigError(f"{where}max_pdu = {dicom.max_pdu} must be 0 (no limit) or from 4096 to 4294967295")


def _check_settings(settings: Settings, where: str) -> None:
    """Values that must be one of a few: say which ones."""
    level = settings.log_level.upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{where}: log_level {settings.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    settings.log_level = level
    if settings.group:
        from dicomfs.privacy import GroupError, group_id

        try:
            group_id(settings.group)
        except GroupError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _apply(target: Any, doc: dict[str, Any], where: str, sections: dict[str, str]) -> None:
    known = {f.name: f for f in fields(target)}
    for key, value in doc.items():
        attr = sections.get(key, key)
        if attr not in known or attr == "source":
            raise ConfigError(f"{where}: unknown setting {key!r}")
        current = getattr(target, attr)
        if attr == "remotes":
            setattr(target, attr, [_remote(item, f"{where}: remotes") for item in _as_list(value, where)])
            continue
        if attr == "rules":
            setattr(target, attr, [_rule(item, f"{where}: rules") for item in _as_list(value, where)])
            continue
        if isinstance(value, dict):
            if not hasattr(current, "__dataclass_fields__"):
                raise ConfigError(f"{where}: {key!r} is a value, not a section")
            _apply(current, value, f"{where} [{key}]", {})
            continue
        setattr(target, attr, _convert(current, value, f"{where}: {key}"))


def _as_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: must be an array of tables ([[dicom.remotes]], [[rules]])")
    return value


def _rule(item: Any, where: str) -> ProjectRule:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: each rule is a table with project, and match and/or calling_ae")
    rule = ProjectRule()
    _apply(rule, item, where, {})
    if not rule.project:
        raise ConfigError(f"{where}: a rule needs the project it assigns to")
    if rule.match:
        from dicomfs.index.query_language import compile_query

        try:
            compile_query(rule.match, "study")
        except ValueError as exc:
            raise ConfigError(f"{where}: rule for {rule.project!r}: {exc}") from None
    return rule


def _remote(item: Any, where: str) -> RemoteNode:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: each remote is a table with name, ae_title, host, port")
    remote = RemoteNode()
    _apply(remote, item, where, {})
    if not (remote.name and remote.ae_title and remote.host):
        raise ConfigError(f"{where}: a remote needs name, ae_title and host")
    if (remote.cert or remote.key or remote.ca) and not remote.tls:
        raise ConfigError(f"{where}: remote {remote.name!r}: ca, cert and key need tls = true")
    if bool(remote.cert) != bool(remote.key):
        raise ConfigError(f"{where}: remote {remote.name!r}: cert and key go together")
    if remote.associations < 1:
        raise ConfigError(f"{where}: remote {remote.name!r}: associations must be at least 1")
    if remote.retrieve not in ("get", "move"):
        raise ConfigError(f"{where}: remote {remote.name!r}: retrieve must be \"get\" or \"move\"")
    return remote


def _convert(current: Any, value: Any, where: str) -> Any:
    if isinstance(current, list):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings")
        return list(value)
    if isinstance(current, Path) or (current is None and isinstance(value, str)):
        return Path(os.path.expanduser(str(value)))
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value
    if isinstance(current, int | float) and not isinstance(value, bool) and isinstance(value, int | float):
        return type(current)(value)
    if isinstance(current, str) and isinstance(value, str):
        return value
    raise ConfigError(f"{where} has the wrong type ({type(value).__name__})")
