"""The command line is a contract: help, options, configuration errors, exit statuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

from dicomfs import config


@pytest.mark.parametrize("command", [[], ["import"], ["serve"]])
def test_every_command_explains_itself(command: list[str]) -> None:
    out = run_cli(*command, "--help").stdout
    for option in ("--data-dir", "--config", "--log-level"):
        assert option in out
    if command == ["serve"]:
        assert "--mount" in out and "--no-mount" in out
    if not command:
        assert "import" in out and "serve" in out


def test_version() -> None:
    assert run_cli("--version").stdout.startswith("dicomfs ")


def test_unknown_config_key_is_an_error_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[mount]\nreadahead = 5\n")
    result = run_cli("--config", cfg, "import", tmp_path, check=False)
    assert result.returncode == 2 and "'readahead'" in result.stderr


def test_invalid_toml_and_wrong_types(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("data_dir = [")
    assert "not valid TOML" in run_cli("--config", cfg, "import", tmp_path, check=False).stderr
    cfg.write_text("[mount]\nallow_other = 'yes'\n")
    assert "true or false" in run_cli("--config", cfg, "import", tmp_path, check=False).stderr


def test_settings_layering(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('data_dir = "~/archive"\nlog_level = "DEBUG"\n[mount]\npath = "/mnt/x"\nread_ahead_kb = 512\n'
                   "[import]\nworkers = 3\n")
    settings = config.load(cfg)
    assert settings.data_dir == Path.home() / "archive"
    assert settings.mount.path == Path("/mnt/x") and settings.mount.read_ahead_kb == 512
    assert settings.import_.workers == 3 and settings.log_level == "DEBUG"
    assert config.load(None).mount.enabled is True


def test_config_file_sets_the_data_dir(tmp_path: Path) -> None:
    import dicomgen

    dicomgen.series(tmp_path / "in", 1)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "fromcfg"}"\n')
    (tmp_path / "fromcfg").mkdir()
    run_cli("--config", cfg, "import", tmp_path / "in")
    assert (tmp_path / "fromcfg" / "index.sqlite").exists()
