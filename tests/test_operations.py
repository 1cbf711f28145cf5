"""The mount's operations called directly, without a kernel mount (in the manner of s3ql's t3_fs_api).

The real ``Operations``, ``Tree`` and ``DerivedStore`` over a temporary archive; only the
kernel's caches are a stand-in that records what the operations ask it to forget.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import dicomgen
import pyfuse3
import pytest
import trio

from dicomfs import deletion
from dicomfs.archive import Archive, open_archive
from dicomfs.derived import DerivedStore
from dicomfs.ingest.files import run_import
from dicomfs.mount.kinds import Kind, Top, inode_of, split_inode
from dicomfs.mount.operations import Operations
from dicomfs.mount.tree import Tree
from dicomfs.mount.watch import follow_changes

T = TypeVar("T")
ROOT = pyfuse3.ROOT_INODE


class RecordingKernel:
    """Stands in for the kernel's caches: remembers what it was told to forget."""

    def __init__(self) -> None:
        self.attributes: list[int] = []
        self.contents: list[int] = []
        self.names: list[tuple[int, bytes]] = []

    def forget_attributes(self, inodes: Iterable[int]) -> None:
        self.attributes.extend(inodes)

    def forget_contents(self, inodes: Iterable[int]) -> None:
        self.contents.extend(inodes)

    def forget_names(self, names: Iterable[tuple[int, bytes]]) -> None:
        self.names.extend(names)


class Mount:
    """Operations over an archive, with helpers that call them as the kernel would."""

    def __init__(self, archive: Archive, derived_root: Path) -> None:
        self.archive = archive
        self.tree = Tree(archive.db)
        self.kernel = RecordingKernel()
        self.store = DerivedStore(derived_root, archive.db, archive.store.root, archive.changes)
        self.ops = Operations(self.tree, archive.store.root, derived=self.store, kernel=self.kernel)  # type: ignore[arg-type]

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.run(fn, *args)

    def lookup(self, *names: str) -> pyfuse3.EntryAttributes:
        attr = None
        inode = ROOT
        for name in names:
            attr = self.run(self.ops.lookup, inode, name.encode(), None)
            inode = attr.st_ino
        assert attr is not None
        return attr

    def inode(self, *names: str) -> int:
        return self.lookup(*names).st_ino if names else ROOT

    def readdir(self, inode: int, start: int = 0, limit: int | None = None) -> list[tuple[str, int, int]]:
        """(name, inode, cookie) as readdir hands them out; ``limit`` makes the reply buffer full."""
        got: list[tuple[str, int, int]] = []

        def reply(token: Any, name: bytes, attr: pyfuse3.EntryAttributes, cookie: int) -> bool:
            if limit is not None and len(got) >= limit:
                return False
            got.append((name.decode(), attr.st_ino, cookie))
            return True

        original = pyfuse3.readdir_reply
        pyfuse3.readdir_reply = reply
        try:
            fh = self.run(self.ops.opendir, inode, None)
            self.run(self.ops.readdir, fh, start, None)
            self.run(self.ops.releasedir, fh)
        finally:
            pyfuse3.readdir_reply = original
        return got

    def names(self, *path: str) -> list[str]:
        return [name for name, _, _ in self.readdir(self.inode(*path))]

    def read(self, inode: int, flags: int = os.O_RDONLY) -> bytes:
        async def whole() -> bytes:
            info = await self.ops.open(inode, flags, None)
            try:
                data, off = b"", 0
                while chunk := await self.ops.read(info.fh, off, 65536):
                    data += chunk
                    off += len(chunk)
                return data
            finally:
                await self.ops.release(info.fh)
        return self.run(whole)

    def errno_of(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> int:
        with pytest.raises(pyfuse3.FUSEError) as caught:
            self.run(fn, *args)
        return caught.value.errno


@pytest.fixture
def mount(tmp_path: Path) -> Mount:
    src = tmp_path / "src"
    dicomgen.series(src / "a", 3)
    dicomgen.series(src / "b", 2, PatientName="ROE^JANE", PatientID="777", StudyDescription="MR Head",
                    Modality="MR", SeriesNumber=1, SeriesDescription="T1")
    archive = open_archive(tmp_path / "data")
    report = run_import(archive, [src], workers=1, progress=False)
    assert report.counts["stored"] == 5
    yield Mount(archive, tmp_path / "derived")
    archive.close()


def import_into_the_ct_series(mount: Mount, tmp_path: Path, number: int) -> None:
    """One more instance of series 1, imported as ``dicomfs import`` does."""
    study_uid, series_uid = mount.archive.db.get_row(
        "SELECT st.study_uid, se.series_uid FROM series se JOIN studies st ON st.id = se.study_id WHERE se.id = 1")
    new = dicomgen.write(tmp_path / f"more{number}" / "new.dcm", dicomgen.make_dataset(
        StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, InstanceNumber=number))
    run_import(mount.archive, [new.parent], workers=1, progress=False)


SERIES = ("patients", "DOE^JOHN [12345]", "2024-03-01 CT Thorax [ACC123]", "003 CT Lung 1.0")


def test_the_layouts_name_what_the_index_holds(mount: Mount) -> None:
    assert mount.names() == ["patients", "studies", "dates", "projects", "query", "orphans"]
    assert mount.names("patients") == ["DOE^JOHN [12345]", "ROE^JANE [777]"]
    assert sorted(mount.names(*SERIES[:3])) == ["003 CT Lung 1.0", "derived", "study.json"]
    assert sorted(mount.names(*SERIES)) == [
        "001.dcm", "001.jpg", "001.json", "002.dcm", "002.jpg", "002.json", "003.dcm", "003.jpg", "003.json",
        "derived", "series.json", "volume.json", "volume.nii"]
    assert mount.names("dates", "2024", "2024-03-01") == ["0815 DOE^JOHN CT Thorax [ACC123]",
                                                           "0815 ROE^JANE MR Head [ACC123]"]
    study_uid = mount.archive.db.get_str("SELECT study_uid FROM studies WHERE id = 1")
    assert len([n for n in mount.names("studies", study_uid) if n.count(".") > 3]) == 1  # one series by UID


def test_listing_and_getattr_agree_and_sizes_are_true(mount: Mount) -> None:
    folder = mount.inode(*SERIES)
    for name, inode, _ in mount.readdir(folder):
        listed = mount.run(mount.ops.lookup, folder, name.encode(), None)
        asked = mount.run(mount.ops.getattr, inode, None)
        assert (listed.st_ino, listed.st_mode, listed.st_size, listed.st_mtime_ns) == \
               (asked.st_ino, asked.st_mode, asked.st_size, asked.st_mtime_ns), name
        if stat.S_ISREG(asked.st_mode):
            assert len(mount.read(inode)) == asked.st_size, name
    first = mount.lookup(*SERIES, "001.dcm")
    stored = mount.archive.store.path(mount.archive.db.get_str("SELECT file_path FROM instances WHERE id = 1"))
    assert mount.read(first.st_ino) == stored.read_bytes()
    assert stat.S_IMODE(first.st_mode) == 0o444 and first.st_uid == os.getuid()
    assert mount.read(mount.inode(*SERIES, "001.jpg"))[:2] == b"\xff\xd8"


def test_summaries_list_the_names_of_the_folders_beside_them(mount: Mount) -> None:
    series = json.loads(mount.read(mount.inode(*SERIES, "series.json")))
    assert [child["name"] for child in series["Instances"]] == ["001.dcm", "002.dcm", "003.dcm"]
    study = json.loads(mount.read(mount.inode(*SERIES[:3], "study.json")))
    assert [child["name"] for child in study["Series"]] == ["003 CT Lung 1.0"]
    patient = json.loads(mount.read(mount.inode(*SERIES[:2], "patient.json")))
    assert [child["name"] for child in patient["Studies"]] == ["2024-03-01 CT Thorax [ACC123]"]
    view = json.loads(mount.read(mount.inode(*SERIES, "002.json")))
    assert view["00200013"]["Value"] == [2]


def test_readdir_cookies_resume_where_a_full_buffer_stopped(mount: Mount) -> None:
    folder = mount.inode(*SERIES)
    whole = mount.readdir(folder)
    first = mount.readdir(folder, limit=4)
    rest = mount.readdir(folder, start=first[-1][2])
    assert first + rest == whole
    assert [cookie for _, _, cookie in whole] == sorted(inode for _, inode, _ in whole)


def test_errors_are_errno_values(mount: Mount) -> None:
    ops = mount.ops
    series = mount.inode(*SERIES)
    dcm = mount.inode(*SERIES, "001.dcm")
    assert mount.errno_of(ops.lookup, series, b"nope.dcm", None) == errno.ENOENT
    assert mount.errno_of(ops.getattr, inode_of(Kind.INSTANCE_DCM, 999), None) == errno.ENOENT
    assert mount.errno_of(ops.getattr, 31 << 5 | 31, None) == errno.ENOENT  # no such kind
    assert mount.errno_of(ops.opendir, dcm, None) == errno.ENOTDIR
    assert mount.errno_of(ops.open, dcm, os.O_WRONLY, None) == errno.EROFS
    assert mount.errno_of(ops.open, dcm, os.O_RDONLY | os.O_TRUNC, None) == errno.EROFS
    assert mount.errno_of(ops.mkdir, series, b"x", 0o755, None) == errno.EROFS
    assert mount.errno_of(ops.create, series, b"x.txt", 0o644, os.O_WRONLY, None) == errno.EROFS
    assert mount.errno_of(ops.unlink, series, b"001.dcm", None) == errno.EROFS
    assert mount.errno_of(ops.rename, series, b"001.dcm", series, b"x.dcm", 0, None) == errno.EROFS
    assert mount.errno_of(ops.getxattr, dcm, b"user.x", None) == errno.ENOSYS


def test_derived_files_are_written_whole_renamed_truncated_and_removed(mount: Mount) -> None:
    ops = mount.ops
    derived = mount.inode(*SERIES[:3], "derived")
    info, attr = mount.run(ops.create, derived, b"fit.csv", 0o644, os.O_WRONLY | os.O_CREAT, None)
    assert stat.S_IMODE(attr.st_mode) == 0o644 and attr.st_size == 0
    assert mount.run(ops.write, info.fh, 0, b"k,v\n1,2\n") == 8
    assert mount.read(attr.st_ino) == b""  # readers see whole versions only: not committed yet
    mount.run(ops.flush, info.fh)
    assert mount.kernel.contents == [attr.st_ino]
    assert mount.read(attr.st_ino) == b"k,v\n1,2\n"
    assert mount.run(ops.write, info.fh, 8, b"3,4\n") == 4  # after a flush: a fresh copy of what is there
    mount.run(ops.release, info.fh)
    assert mount.read(attr.st_ino) == b"k,v\n1,2\n3,4\n"
    assert mount.names(*SERIES[:3], "derived") == ["fit.csv"]

    fields = SimpleNamespace(update_size=True)  # pyfuse3.SetattrFields is read-only from Python
    short = pyfuse3.EntryAttributes()
    short.st_size = 3
    assert mount.run(ops.setattr, attr.st_ino, short, fields, None, None).st_size == 3
    assert mount.read(attr.st_ino) == b"k,v"

    mount.run(ops.rename, derived, b"fit.csv", derived, b"model fit.csv", 0, None)
    assert mount.names(*SERIES[:3], "derived") == ["model fit.csv"]
    other = mount.inode(*SERIES, "derived")
    assert mount.errno_of(ops.rename, derived, b"model fit.csv", other, b"x.csv", 0, None) == errno.EXDEV
    assert mount.errno_of(ops.create, derived, b"a/b", 0o644, os.O_WRONLY, None) == errno.EINVAL
    assert mount.errno_of(ops.create, derived, b"bad:name", 0o644, os.O_WRONLY, None) == errno.EINVAL
    assert mount.errno_of(ops.unlink, derived, b"missing.csv", None) == errno.ENOENT
    mount.run(ops.unlink, derived, b"model fit.csv", None)
    assert mount.names(*SERIES[:3], "derived") == []


def test_a_failing_commit_at_release_is_an_errno_not_the_end_of_the_mount(
        mount: Mount, monkeypatch: pytest.MonkeyPatch) -> None:
    """release() was the one handler without the error mapping: an exception there ended the FUSE main loop."""
    ops = mount.ops
    derived = mount.inode(*SERIES, "derived")
    info, attr = mount.run(ops.create, derived, b"map.nii", 0o644, os.O_WRONLY | os.O_CREAT, None)
    mount.run(ops.write, info.fh, 0, b"voxels")

    def no_space(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mount.store, "place", no_space)
    assert mount.errno_of(ops.release, info.fh) == errno.ENOSPC
    assert list(mount.store.tmp_dir.iterdir()) == []  # the private copy is gone
    assert mount.errno_of(ops.read, info.fh, 0, 10) == errno.EBADF  # the handle is gone too
    monkeypatch.undo()
    assert mount.read(attr.st_ino) == b""  # the last committed version stays
    assert mount.names(*SERIES) != []  # and the mount goes on answering


def test_query_folders_are_saved_by_use_and_removed_by_rmdir(mount: Mount) -> None:
    query = mount.inode("query")
    attr = mount.run(mount.ops.lookup, query, b"Modality=MR", None)
    assert stat.S_ISDIR(attr.st_mode)
    assert mount.names("query") == ["Modality=MR"]
    assert mount.names("query", "Modality=MR") == ["ROE^JANE 2024-03-01 MR Head [ACC123]"]
    assert mount.errno_of(mount.ops.lookup, query, b"Modality=(", None) == errno.ENOENT
    assert mount.errno_of(mount.ops.mkdir, query, b"Modality=(", 0o755, None) == errno.EINVAL
    mount.run(mount.ops.rmdir, query, b"Modality=MR", None)
    assert mount.names("query") == []


def test_an_invalid_query_folder_is_logged_once_with_its_reason_and_keeps_its_errno(
        mount: Mount, caplog: pytest.LogCaptureFixture) -> None:
    query = mount.inode("query")
    caplog.set_level("DEBUG", logger="dicomfs.mount.layouts")
    for _ in range(3):
        assert mount.errno_of(mount.ops.lookup, query, b"SliceThikness<1", None) == errno.ENOENT
        assert mount.errno_of(mount.ops.mkdir, query, b"SliceThikness<1", 0o755, None) == errno.EINVAL
    assert mount.errno_of(mount.ops.lookup, query, b"Modality=(", None) == errno.ENOENT
    assert mount.errno_of(mount.ops.lookup, query, b".hidden", None) == errno.ENOENT  # a file manager's probe
    warnings = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelname != "DEBUG"]
    assert [level for level, _ in warnings] == ["WARNING", "WARNING"]
    unknown, syntax = (message for _, message in warnings)
    assert unknown.startswith("/query/SliceThikness<1 is not a query: unknown keyword 'SliceThikness' "
                              "(did you mean SliceThickness?) at position 0; known attributes")
    assert "; instance: " in unknown and "SliceThickness" in unknown and "\n" not in unknown
    assert syntax == "/query/Modality=( is not a query: expected a value after '=', found '(' at position 9"
    assert mount.names("query") == []  # nothing invalid is saved


def test_patients_studies_and_series_named_with_a_leading_dot_are_visible(tmp_path: Path) -> None:
    src = tmp_path / "src"
    dicomgen.series(src / "a", 1, PatientName=".Hidden^Anna", PatientID="", StudyDescription=".secret",
                    SeriesNumber=None, Modality="", SeriesDescription=".localizer")
    dicomgen.series(src / "b", 1, PatientName="_Hidden^Anna", PatientID="")
    archive = open_archive(tmp_path / "data")
    try:
        assert run_import(archive, [src], workers=1, progress=False).counts["stored"] == 2
        m = Mount(archive, tmp_path / "derived")
        patients = m.names("patients")
        assert sorted(patients) == ["_Hidden^Anna", "_Hidden^Anna (2)"]  # unique, neither hidden
        studies = [(p, st) for p in patients for st in m.names("patients", p) if st != "patient.json"]
        series = [n for p, st in studies for n in m.names("patients", p, st)]
        assert "_localizer" in series
        assert not any(n.startswith(".") for n in [*patients, *(st for _, st in studies), *series])
    finally:
        archive.close()


def test_new_instances_and_deletions_reach_listings_through_the_change_log(mount: Mount, tmp_path: Path) -> None:
    series = mount.inode(*SERIES)
    study = mount.inode(*SERIES[:3])
    assert len(mount.names(*SERIES)) == 13  # 3 x 3 views, series.json, volume.nii and .json, derived/
    seen = mount.archive.changes.newest()

    import_into_the_ct_series(mount, tmp_path, 4)
    refresh = mount.tree.refresh(mount.archive.changes.read_since(seen))
    assert {series, study, mount.inode(*SERIES[:2]), mount.inode("patients")} <= set(refresh.attributes)
    assert inode_of(Kind.SERIES_JSON, 1) in refresh.contents
    assert "004.dcm" in mount.names(*SERIES)

    seen = mount.archive.changes.newest()
    jane = mount.inode("patients", "ROE^JANE [777]")
    deletion.delete(mount.archive.db, mount.archive.store, "patient", [split_inode(jane)[1]])
    refresh = mount.tree.refresh(mount.archive.changes.read_since(seen))
    assert (mount.inode("patients"), b"ROE^JANE [777]") in refresh.gone
    assert mount.names("patients") == ["DOE^JOHN [12345]"]


def test_the_watcher_is_woken_by_this_process_s_writes(mount: Mount) -> None:
    """Writes through the archive's own change log refresh the tree without waiting for a poll."""
    derived = mount.inode(*SERIES[:3], "derived")
    assert mount.names(*SERIES[:3], "derived") == []
    stale: list[int] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow_changes, mount.archive.changes, mount.tree, 3600.0, mount.kernel)
            await trio.sleep(0.05)
            temp = mount.store.temp_path()
            temp.write_bytes(b"stats")
            mount.store.commit("study", 1, "stats.csv", temp)  # the store notes the change
            with trio.fail_after(5):
                while derived not in mount.kernel.attributes:
                    await trio.sleep(0.01)
            stale.extend(mount.kernel.attributes)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert inode_of(Kind.TOP_FOLDER, Top.PATIENTS) in stale
    assert mount.names(*SERIES[:3], "derived") == ["stats.csv"]


def test_projects_show_their_members_with_the_contents_of_the_patient_layout(mount: Mount) -> None:
    from dicomfs.index import organise

    db = mount.archive.db
    organise.create_project(db, "lung")
    organise.add_members(db, "lung", "series", [1])  # the CT series only
    organise.add_members(db, "lung", "patient", [2])  # and all of ROE^JANE
    assert mount.names("projects") == ["lung"]
    assert mount.names("projects", "lung") == ["DOE^JOHN [12345]", "ROE^JANE [777]"]
    study = ("projects", "lung", "DOE^JOHN [12345]", "2024-03-01 CT Thorax [ACC123]")
    assert sorted(mount.names(*study)) == ["003 CT Lung 1.0", "derived", "study.json"]
    assert sorted(mount.names(*study, "003 CT Lung 1.0")) == sorted(mount.names(*SERIES))
    assert mount.lookup(*study, "003 CT Lung 1.0", "001.dcm").st_ino == mount.lookup(*SERIES, "001.dcm").st_ino
    project = mount.inode("projects", "lung")
    assert mount.run(mount.ops.getattr, project, None).st_mtime_ns > 0
    assert mount.tree.origin(mount.inode(*study)) == ("study", 1)


def test_a_summary_opened_after_it_grew_makes_the_kernel_forget_its_old_size(mount: Mount, tmp_path: Path) -> None:
    """Without that, the kernel would stop reading at the size it was given with the listing."""
    summary = mount.inode(*SERIES, "series.json")
    listed = mount.run(mount.ops.getattr, summary, None).st_size
    assert len(mount.read(summary)) == listed and summary not in mount.kernel.attributes
    seen = mount.archive.changes.newest()
    import_into_the_ct_series(mount, tmp_path, 9)
    mount.tree.refresh(mount.archive.changes.read_since(seen))
    grown = mount.read(summary)
    assert len(grown) > listed and summary in mount.kernel.attributes
    assert json.loads(grown)["Instances"][-1]["name"] == "009.dcm"


# ---------------------------------------------------------------- views: probes, failures


def test_a_format_probe_of_a_jpg_renders_nothing_and_reads_the_files_own_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dicomgen.series(tmp_path / "src", 1, rows=512, columns=512)
    archive = open_archive(tmp_path / "data")
    run_import(archive, [tmp_path / "src"], workers=1, progress=False)
    mount = Mount(archive, tmp_path / "derived")
    inode = mount.inode(*SERIES, "001.jpg")
    size = mount.lookup(*SERIES, "001.jpg").st_size
    assert size == 2048 + 512 * 512 // 2
    renders: list[int] = []
    render = mount.ops._render

    async def counted(*args: Any) -> bytes:
        renders.append(1)
        return await render(*args)

    monkeypatch.setattr(mount.ops, "_render", counted)

    async def probe() -> tuple[bytes, bytes]:
        info = await mount.ops.open(inode, os.O_RDONLY, None)
        try:  # what dcm2niix and GDCM read: the first bytes, and the last block (fseek SEEK_END)
            return await mount.ops.read(info.fh, 0, 256), await mount.ops.read(info.fh, size - 2048, 4096)
        finally:
            await mount.ops.release(info.fh)

    head, tail = mount.run(probe)
    assert renders == []
    whole = mount.read(inode)
    assert renders == [1] and len(whole) == size
    assert whole[:256] == head and whole[size - 2048:] == tail
    archive.close()


def test_a_listed_jpg_that_fails_to_render_reads_as_a_placeholder_of_its_size(
        mount: Mount, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import io

    from PIL import Image

    from dicomfs.mount import operations
    from dicomfs.views.render import RenderError

    def broken(suffix: str, path: Path, frame: int = 0) -> bytes:
        raise RenderError("cannot decode frame 0: test")

    monkeypatch.setattr(operations, "render_view", broken)
    attr = mount.lookup(*SERIES, "002.jpg")
    for _ in range(2):
        data = mount.read(attr.st_ino)
        assert len(data) == attr.st_size
        with Image.open(io.BytesIO(data)) as image:
            image.load()
        assert b"frame not rendered: cannot decode frame 0: test" in data
    logged = [r for r in caplog.records if "placeholder" in r.getMessage()]
    assert len(logged) == 1  # once per instance, not per read


def test_an_object_that_cannot_be_rendered_gets_no_jpg_and_a_reason(tmp_path: Path) -> None:
    from conftest import copy_testdata

    copy_testdata(["JPEG-lossy.dcm", "CT_small.dcm"], tmp_path / "src")
    archive = open_archive(tmp_path / "data")
    try:
        assert run_import(archive, [tmp_path / "src"], workers=1, progress=False).counts["stored"] == 2
        m = Mount(archive, tmp_path / "derived")
        found: dict[str, list[str]] = {}
        for patient in m.names("patients"):
            for study in [s for s in m.names("patients", patient) if not s.endswith(".json")]:
                for series in [s for s in m.names("patients", patient, study) if s not in ("derived", "study.json")]:
                    path = ("patients", patient, study, series)
                    summary = json.loads(m.read(m.inode(*path, "series.json")))
                    for child in summary["Instances"]:
                        found[child["SOPClassUID"] + child["name"]] = [
                            n for n in m.names(*path) if n.startswith(child["name"][:-4])]
                        if child["jpg"] is None:
                            assert "cannot be decoded" in child["no_jpg_reason"]
                            assert "1.2.840.10008.1.2.4.51" in child["no_jpg_reason"]
                        else:
                            assert "no_jpg_reason" not in child
        assert sorted(len(names) for names in found.values()) == [2, 3]  # .dcm and .json; and the .jpg too
    finally:
        archive.close()


def test_a_multi_frame_instance_has_a_folder_of_its_frames(tmp_path: Path) -> None:
    import io

    from conftest import copy_testdata
    from PIL import Image

    from dicomfs.views.jpeg_size import jpeg_probe, jpeg_size

    copy_testdata(["rtdose.dcm"], tmp_path / "src")  # RT Dose: 15 frames of 10x10
    archive = open_archive(tmp_path / "data")
    try:
        run_import(archive, [tmp_path / "src"], workers=1, progress=False)
        m = Mount(archive, tmp_path / "derived")
        study_uid, series_uid = archive.db.get_row(
            "SELECT st.study_uid, se.series_uid FROM series se JOIN studies st ON st.id = se.study_id")
        series = ("studies", study_uid, series_uid)
        stem = archive.db.get_str("SELECT sop_uid FROM instances")
        assert f"{stem}.frames" in m.names(*series)
        frames = m.readdir(m.inode(*series, f"{stem}.frames"))
        assert [name for name, _, _ in frames] == [f"{n:04d}.jpg" for n in range(1, 16)]
        size = jpeg_size(10, 10, False)
        views = []
        for name, inode, _ in frames:
            attr = m.run(m.ops.getattr, inode, None)
            assert attr.st_size == size and m.lookup(*series, f"{stem}.frames", name).st_ino == inode
            data = m.read(inode)
            assert len(data) == size and data.startswith(jpeg_probe(size)[0])
            assert f"dicomfs view: frame {int(name[:4])}/15".encode() in data
            with Image.open(io.BytesIO(data)) as image:
                assert image.size == (10, 10)
            views.append(data)
        assert views[0] == m.read(m.inode(*series, f"{stem}.jpg"))  # the instance's .jpg is frame 1
        assert len(set(views)) == 15
        assert m.errno_of(m.ops.lookup, m.inode(*series, f"{stem}.frames"), b"0016.jpg", None) == errno.ENOENT
    finally:
        archive.close()


def test_views_read_in_small_pieces_are_whole(tmp_path: Path) -> None:
    dicomgen.series(tmp_path / "src", 1, rows=256, columns=256, StudyDescription="x" * 9000)
    archive = open_archive(tmp_path / "data")
    try:
        run_import(archive, [tmp_path / "src"], workers=1, progress=False)
        m = Mount(archive, tmp_path / "derived")
        series = ("studies", *archive.db.get_row(
            "SELECT st.study_uid, se.series_uid FROM series se JOIN studies st ON st.id = se.study_id"))
        stem = archive.db.get_str("SELECT sop_uid FROM instances")
        for suffix in (".json", ".jpg"):
            attr = m.lookup(*series, stem + suffix)
            assert attr.st_size > 8192

            async def pieces(inode: int = attr.st_ino) -> bytes:
                info = await m.ops.open(inode, os.O_RDONLY, None)
                data = b""
                while chunk := await m.ops.read(info.fh, len(data), 4096):
                    data += chunk
                await m.ops.release(info.fh)
                return data

            assert m.run(pieces) == m.read(attr.st_ino) and len(m.read(attr.st_ino)) == attr.st_size
    finally:
        archive.close()
