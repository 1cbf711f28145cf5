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


@dataclass(slots=True)
class ProjectRule:
    """Routes arriving studies into a project: ``match`` is a query, ``calling_ae`` the sender."""

    project: str = ""
    match: str = ""  # in the query language, evaluated at study level; empty: any study
    calling_ae: str = ""  # only data received from this AE title; empty: any source


@dataclass(slots=True)
class AllowSettings:
    """Calling AE titles allowed per service group; empty = anyone. Entries: "AE" or "AE@host"."""

    store: list[str] = field(default_factory=list)
    query: list[str] = field(default_factory=list)
    retrieve: list[str] = field(default_factory=list)


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
    bind: str = "0.0.0.0"
    max_associations: int = 16
    max_pdu: int = 0  # 0 = unlimited: fewer, larger PDUs (measured 98 -> 134 objects/s)
    network_timeout: float = 60.0
    fold_names: bool = True  # C-FIND person names match without regard to (ASCII) case
    allow: AllowSettings = field(default_factory=AllowSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    remotes: list[RemoteNode] = field(default_factory=list)
    refresh_minutes: float = 15.0  # how often saved remote queries are run again (0: only on demand)
    cache_mb: float = 10_240.0  # fetched remote data kept locally; least recently used series are evicted

    def remote(self, name: str) -> RemoteNode | None:
        return next((r for r in self.remotes if r.name == name), None)

    def remote_by_ae(self, ae_title: str) -> RemoteNode | None:
        return next((r for r in self.remotes if r.ae_title == ae_title), None)


@dataclass(slots=True)
class Settings:
    data_dir: Path = field(default_factory=lambda: _xdg("XDG_DATA_HOME", ".local/share") / "dicomfs")
    log_level: str = "INFO"
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
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration {path} is not valid TOML: {exc}") from exc
    _apply(settings, doc, str(path), _SECTIONS)
    settings.source = path
    return settings


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
