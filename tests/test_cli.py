"""The command line is a contract: help, options, configuration errors, exit statuses."""

from __future__ import annotations

import os
import pwd
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import DICOMFS, cli_env, run_cli

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


# ------------------------------------------------------------------ every common mistake: one line, exit 2


def in_namespace(setup: str, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """``dicomfs ARGS`` in a private mount namespace prepared by the shell commands ``setup``
    (nothing mounted there is seen outside, and it all goes when the process ends)."""
    command = " ".join(shlex.quote(str(a)) for a in (*DICOMFS, *args))
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", f"{setup} && exec {command}"],
                          capture_output=True, text=True, timeout=60, env=cli_env())


def assert_one_line(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"dicomfs: {message}"
    assert [line for line in result.stderr.splitlines() if line.startswith("dicomfs:")] == [f"dicomfs: {message}"]


def test_a_log_level_that_does_not_exist_names_the_allowed_ones(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('log_level = "VERBOSE"\n')
    assert_one_line(run_cli("--config", cfg, "status", check=False),
                    f"{cfg}: log_level 'VERBOSE' is not one of DEBUG, INFO, WARNING, ERROR")
    cfg.write_text('log_level = "debug"\n')  # the command line accepts any case, and so does the file
    assert config.load(cfg).log_level == "DEBUG"


def test_a_missing_configuration_file(tmp_path: Path) -> None:
    assert_one_line(run_cli("--config", tmp_path / "nope.toml", "status", check=False),
                    f"configuration file {tmp_path / 'nope.toml'} does not exist: check --config")


def test_a_group_that_does_not_exist(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('group = "no-such-group-x"\n')
    assert_one_line(run_cli("--config", cfg, "status", check=False),
                    f"{cfg}: group 'no-such-group-x' (setting 'group') does not exist: create it "
                    "(groupadd no-such-group-x) or remove the setting")


@pytest.mark.parametrize("command", [["serve", "--no-dicom"], ["import"], ["status"], ["project", "list"]])
def test_a_mistyped_data_dir_creates_nothing(tmp_path: Path, command: list[str]) -> None:
    typo = tmp_path / "archvie"
    args = [*command, "--data-dir", typo, "--mount", tmp_path / "mnt"] if command[0] == "serve" else \
        [*command, "--data-dir", typo, *([tmp_path] if command == ["import"] else [])]
    hint = "" if command[0] == "status" else " (or add --create)"
    assert_one_line(run_cli(*args, check=False),
                    f"no archive at {typo}: check --data-dir, or create one with 'dicomfs init {typo}'{hint}")
    assert not typo.exists()


def test_init_and_create_make_an_archive(tmp_path: Path) -> None:
    import dicomgen

    assert run_cli("init", tmp_path / "a").stdout.strip() == \
        f"created an empty archive at {tmp_path / 'a'} (readable by the owner only)"
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert "0 patients" in run_cli("status", "--data-dir", tmp_path / "a").stdout
    assert_one_line(run_cli("init", tmp_path / "a", check=False), f"{tmp_path / 'a'} is already a dicomfs archive: "
                                                                    "nothing to do")
    dicomgen.series(tmp_path / "in", 2)
    run_cli("import", "--create", "--data-dir", tmp_path / "b" / "nested", tmp_path / "in")
    assert "2 local instances" in run_cli("status", "--data-dir", tmp_path / "b" / "nested").stdout


def test_paths_that_are_not_archives(tmp_path: Path) -> None:
    assert_one_line(run_cli("status", "--data-dir", "/etc/passwd", check=False),
                    "/etc/passwd is not a dicomfs archive (not a folder): give --data-dir the archive's folder, "
                    "or a new or empty one")
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"\xff\xd8")
    message = f"{folder} is not a dicomfs archive (it holds files but no index.sqlite): give --data-dir the " \
              "archive's folder, or a new or empty one"
    assert_one_line(run_cli("import", "--data-dir", folder, tmp_path, check=False), message)
    assert_one_line(run_cli("status", "--data-dir", folder, check=False), message)
    assert_one_line(run_cli("serve", "--data-dir", folder, "--no-mount", "--no-dicom", check=False), message)
    assert os.listdir(folder) == ["holiday.jpg"]


def test_a_read_only_archive_is_one_failure_up_front(tmp_path: Path) -> None:
    import dicomgen

    data = tmp_path / "data"
    dicomgen.series(tmp_path / "in", 3)
    run_cli("import", "--create", "--data-dir", data, tmp_path / "in")
    read_only = f"mount --bind {data} {data} && mount -o remount,ro,bind {data}"
    message = f"the archive {data} is on a read-only file system: remount it read-write, or give --data-dir a " \
              "writable archive"
    assert_one_line(in_namespace(read_only, "import", "--data-dir", data, tmp_path / "in"), message)
    assert_one_line(in_namespace(read_only, "serve", "--data-dir", data, "--mount", tmp_path / "mnt", "--no-dicom"),
                    message)
    assert "3 local instances" in in_namespace(read_only, "status", "--data-dir", data).stdout  # reading still works


def test_an_archive_of_another_user_is_one_failure_up_front(tmp_path: Path, open_folder: Path) -> None:
    os.chmod(tmp_path, 0o700)
    data = tmp_path / "data"
    run_cli("init", data)

    def as_nobody(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *DICOMFS,
                               *map(str, args)],
                              capture_output=True, text=True, timeout=60, env={**cli_env(), "HOME": "/nonexistent"})

    assert_one_line(as_nobody("status", "--data-dir", data),
                    f"cannot reach the archive {data} (permission denied on a folder above it): run dicomfs as "
                    "the archive's owner, or give --data-dir your own")
    data = open_folder / "data"
    run_cli("init", data)
    assert_one_line(as_nobody("project", "list", "--data-dir", data),
                    f"the archive {data} cannot be read by this user (permission denied): run dicomfs as the "
                    "archive's owner, or give --data-dir your own")
    for path in (data, data / "store", data / "store" / ".tmp"):
        os.chmod(path, 0o755)
    os.chmod(data / "index.sqlite", 0o644)
    assert_one_line(as_nobody("project", "list", "--data-dir", data),
                    f"the archive {data} cannot be written by this user ({data}: permission denied): run "
                    "dicomfs as the archive's owner, or give --data-dir your own")


def test_no_usable_fuse_device(tmp_path: Path) -> None:
    run_cli("init", tmp_path / "data")
    hint = "install fuse3 and load the fuse module; in a container, pass --device /dev/fuse; or serve with --no-mount"
    hidden = in_namespace("mount --bind /dev/null /dev/fuse", "serve", "--data-dir", tmp_path / "data",
                          "--mount", tmp_path / "mnt", "--no-dicom")
    assert_one_line(hidden, f"/dev/fuse is not the FUSE device: {hint}")
    missing = in_namespace("mount -t tmpfs none /dev", "serve", "--data-dir", tmp_path / "data",
                           "--mount", tmp_path / "mnt", "--no-dicom")
    assert_one_line(missing, f"cannot open /dev/fuse (No such file or directory): {hint}")
    assert not os.path.ismount(tmp_path / "mnt")


def test_a_user_without_access_to_the_fuse_device(open_folder: Path) -> None:
    if os.stat("/dev/fuse").st_mode & 0o006 == 0o006:
        pytest.fail("/dev/fuse is open to every user here: this test needs it restricted (as Debian's 0600 is)")
    data, mount = open_folder / "data", open_folder / "mnt"
    for folder in (data, mount):
        folder.mkdir()
        os.chown(folder, pwd.getpwnam("nobody").pw_uid, -1)
    result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *DICOMFS, "serve",
                             "--data-dir", str(data), "--mount", str(mount), "--no-dicom"],
                            capture_output=True, text=True, timeout=60, env={**cli_env(), "HOME": "/nonexistent"})
    assert_one_line(result, "cannot open /dev/fuse (Permission denied): this user may not use FUSE; make the device "
                            "usable by all (chmod 0666 /dev/fuse, as fuse3 installs it), or serve with --no-mount")


def test_mount_point_and_data_dir_must_not_nest(tmp_path: Path) -> None:
    run_cli("init", tmp_path / "data")
    assert_one_line(run_cli("serve", "--data-dir", tmp_path / "data", "--mount", tmp_path / "data" / "mnt",
                            "--no-dicom", check=False),
                    f"mount point {tmp_path / 'data' / 'mnt'} is inside the data directory {tmp_path / 'data'}: "
                    "give --mount a folder outside it")
    assert_one_line(run_cli("serve", "--data-dir", tmp_path / "mnt" / "data", "--create", "--mount", tmp_path / "mnt",
                            "--no-dicom", check=False),
                    f"the data directory {tmp_path / 'mnt' / 'data'} is inside the mount point {tmp_path / 'mnt'}: "
                    "the mount would hide it; give --mount a folder outside it")
    assert not (tmp_path / "mnt").exists()


def test_another_file_system_mounted_at_the_mount_point_is_left_alone(tmp_path: Path) -> None:
    run_cli("init", tmp_path / "data")
    (tmp_path / "mnt").mkdir()
    result = in_namespace(f"mount -t tmpfs none {tmp_path / 'mnt'}", "serve", "--data-dir", tmp_path / "data",
                          "--mount", tmp_path / "mnt", "--no-dicom")
    assert_one_line(result, f"{tmp_path / 'mnt'} is already a mount point (tmpfs): unmount it, or give --mount "
                            "another folder")
