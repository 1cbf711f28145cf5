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


class ConfigError(ValueError):
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


@dataclass(slots=True)
class ImportSettings:
    workers: int = 0  # parser processes; 0 = one per CPU
    batch: int = 64  # instances per index transaction


@dataclass(slots=True)
class Settings:
    data_dir: Path = field(default_factory=lambda: _xdg("XDG_DATA_HOME", ".local/share") / "dicomfs")
    log_level: str = "INFO"
    poll_interval: float = 0.25  # seconds between checks for index changes made by other processes
    mount: MountSettings = field(default_factory=MountSettings)
    import_: ImportSettings = field(default_factory=ImportSettings)
    source: Path | None = None  # the file these settings were read from

    @property
    def index_path(self) -> Path:
        return self.data_dir / "index.sqlite"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "store"


_SECTIONS = {"mount": "mount", "import": "import_"}


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
        if isinstance(value, dict):
            if not hasattr(current, "__dataclass_fields__"):
                raise ConfigError(f"{where}: {key!r} is a value, not a section")
            _apply(current, value, f"{where} [{key}]", {})
            continue
        setattr(target, attr, _convert(current, value, f"{where}: {key}"))


def _convert(current: Any, value: Any, where: str) -> Any:
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
