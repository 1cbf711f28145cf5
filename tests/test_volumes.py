"""Series volumes in process: the planner, the NIfTI header, the bytes the mount serves, freshness.

Geometry is checked against the positions written into the generated files themselves
(voxel (0, 0, k) of the volume must be at slice k's ImagePositionPatient); the comparison
with dcm2niix on real mounts is in ``test_volume_mount``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import dicomgen
import nibabel as nib
import numpy as np
import pydicom
import pytest
from schema_undo import undo_schema_v7
from test_operations import Mount

from dicomfs.archive import open_archive
from dicomfs.index.changes import Changes
from dicomfs.ingest.files import run_import
from dicomfs.mount.kinds import Kind, split_inode
from dicomfs.volumes import nifti
from dicomfs.volumes.facts import FACTS_VERSION, InstanceFacts, extract
from dicomfs.volumes.plan import plan_series

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def stack(directory: Path, count: int, *, rows: int = 4, columns: int = 3,
          step: tuple[float, float, float] = (0, 0, 2.5), origin: tuple[float, float, float] = (10.0, 20.0, 0.0),
          orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
          spacing: tuple[float, float] = (0.5, 0.8), shuffle: bool = True, study: str = "", series: str = "",
          per_slice: dict[int, dict[str, object]] | None = None, **attrs: object) -> list[Path]:
    """A series of ``count`` slices whose pixel values say which slice they are (100 * (k + 1) + index)."""
    study = study or pydicom.uid.generate_uid()
    series = series or pydicom.uid.generate_uid()
    order = list(range(count))
    if shuffle:
        random.Random(count).shuffle(order)
    paths = []
    for k in order:
        position = [o + k * s for o, s in zip(origin, step, strict=True)]
        extra = {"ImagePositionPatient": position, "ImageOrientationPatient": list(orientation),
                 "PixelSpacing": list(spacing), **attrs, **(per_slice or {}).get(k, {})}
        ds = dicomgen.make_dataset(rows=rows, columns=columns, StudyInstanceUID=study, SeriesInstanceUID=series,
                                   InstanceNumber=count - k, **extra)
        ds.PixelData = (np.arange(rows * columns, dtype=np.uint16).reshape(rows, columns) + 100 * (k + 1)).tobytes()
        paths.append(dicomgen.write(directory / f"{series[-12:]}-{k}.dcm", ds))
    return paths


def facts_of(paths: list[Path]) -> list[tuple[int, str, InstanceFacts]]:
    out = []
    for number, path in enumerate(paths, 1):
        ds = pydicom.dcmread(path)
        out.append((number, str(ds.SOPInstanceUID), extract(ds)))
    return out


def assert_positions(image: nib.Nifti1Image, paths: list[Path]) -> None:
    """Each file's first pixel is where the volume's affine puts the voxel holding its values."""
    data = np.asarray(image.dataobj.get_unscaled())
    for path in paths:
        ds = pydicom.dcmread(path)
        first_value = int(np.frombuffer(ds.PixelData, "<u2")[0])
        where = np.argwhere(data == first_value)
        assert len(where) >= 1, f"{path.name}: its pixels are not in the volume"
        voxel = where[0]
        assert voxel[0] == 0 and voxel[1] == 0
        position = image.affine @ np.array([*voxel[:3], 1.0])
        expected = LPS_TO_RAS @ np.array([float(v) for v in ds.ImagePositionPatient])
        assert np.allclose(position[:3], expected, atol=0.01), (path.name, position[:3], expected)


# ----------------------------------------------------------------------------- the planner

def test_slices_are_ordered_by_position_not_instance_number_or_arrival(tmp_path: Path) -> None:
    plan = plan_series(facts_of(stack(tmp_path, 6)))
    [volume] = plan.volumes
    firsts = [s.frame_facts.position[2] for s in volume.slices]  # type: ignore[union-attr,index]
    assert firsts == sorted(firsts) == [0.0, 2.5, 5.0, 7.5, 10.0, 12.5]
    assert volume.name == "volume" and (volume.columns, volume.rows, volume.slices_per_volume) == (3, 4, 6)
    assert np.allclose(volume.affine[:3, 3], LPS_TO_RAS @ np.array([10.0, 20.0, 0.0]))
    assert np.allclose(np.diag(volume.affine)[:3], [-0.8, -0.5, 2.5])  # columns 0.8 mm apart, rows 0.5 mm


@pytest.mark.parametrize("orientation, step", [
    ((0, 1, 0, 0, 0, -1), (3.0, 0, 0)),  # sagittal
    ((1, 0, 0, 0, 0, -1), (0, -2.0, 0)),  # coronal
    ((0.8660254, 0.5, 0, -0.5, 0.8660254, 0), (0, 0, 1.5)),  # oblique in plane
    ((1, 0, 0, 0, 0.9659258, -0.2588190), (0, 0.2588190 * 2, 0.9659258 * 2)),  # oblique through plane
], ids=["sagittal", "coronal", "oblique", "double-oblique"])
def test_every_slice_lies_where_its_file_says(tmp_path: Path, orientation: tuple[float, ...],
                                              step: tuple[float, float, float]) -> None:
    paths = stack(tmp_path, 5, orientation=orientation, step=step)
    [volume] = plan_series(facts_of(paths)).volumes
    image = _image(volume, paths)
    assert_positions(image, paths)


def test_gantry_tilt_gets_a_sheared_sform_that_places_every_slice(tmp_path: Path) -> None:
    tilt = np.radians(15)
    step = (0.0, 2.0 * np.sin(tilt), 2.0 * np.cos(tilt))  # positions move along y as z advances
    paths = stack(tmp_path, 5, step=step, GantryDetectorTilt=15)
    [volume] = plan_series(facts_of(paths)).volumes
    assert any("gantry tilt" in note for note in volume.notes)
    image = _image(volume, paths)
    assert_positions(image, paths)
    assert image.get_qform(coded=True)[1] == 1  # the orthogonal part, as the standard asks


def test_repeated_positions_make_a_4d_volume_in_time_order(tmp_path: Path) -> None:
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    paths = []
    for t in (2, 0, 1):
        paths += stack(tmp_path / str(t), 3, study=study, series=series, TemporalPositionIdentifier=t + 1,
                       AcquisitionTime=f"10{t:02d}00")
    [volume] = plan_series(facts_of(paths)).volumes
    assert (volume.slices_per_volume, volume.timepoints) == (3, 3)
    assert volume.repetition == "temporal positions"
    times = [s.frame_facts.temporal for s in volume.slices]  # type: ignore[union-attr]
    assert times == [1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_echoes_split_into_volumes_named_by_echo(tmp_path: Path) -> None:
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    paths = stack(tmp_path / "1", 3, study=study, series=series, EchoNumbers=1, EchoTime=10)
    paths += stack(tmp_path / "2", 3, study=study, series=series, EchoNumbers=2, EchoTime=20)
    plan = plan_series(facts_of(paths))
    assert [v.name for v in plan.volumes] == ["volume_echo-1", "volume_echo-2"]
    assert [v.slices_per_volume for v in plan.volumes] == [3, 3]


def test_localizers_in_three_orientations_are_not_forced_into_one_stack(tmp_path: Path) -> None:
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    paths = stack(tmp_path / "ax", 4, study=study, series=series)
    paths += stack(tmp_path / "sag", 1, study=study, series=series, orientation=(0, 1, 0, 0, 0, -1))
    paths += stack(tmp_path / "cor", 1, study=study, series=series, orientation=(1, 0, 0, 0, 0, -1))
    plan = plan_series(facts_of(paths))
    assert [v.name for v in plan.volumes] == ["volume_axial"]
    assert sorted(plan.left_out) == ["volume_coronal: a single image, no volume",
                                     "volume_sagittal: a single image, no volume"]


def test_a_slice_of_another_size_is_split_off(tmp_path: Path) -> None:
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    paths = stack(tmp_path / "a", 4, study=study, series=series)
    paths += stack(tmp_path / "b", 1, study=study, series=series, rows=5, origin=(10, 20, 30))
    plan = plan_series(facts_of(paths))
    assert [v.name for v in plan.volumes] == ["volume_3x4"]
    assert plan.left_out == ["volume_3x5: a single image, no volume"]


def test_a_missing_slice_keeps_the_true_geometry_and_is_reported(tmp_path: Path) -> None:
    paths = [p for p in stack(tmp_path, 6, shuffle=False) if not p.name.endswith("-3.dcm")]
    [volume] = plan_series(facts_of(paths)).volumes
    assert volume.slices_per_volume == 6 and volume.slices[3] is None
    assert volume.notes and "1 missing slices" in volume.notes[0]
    assert_positions(_image(volume, paths), paths)


def test_no_geometry_and_single_images_give_a_reason_not_a_volume(tmp_path: Path) -> None:
    bare = stack(tmp_path / "bare", 3, ImagePositionPatient=dicomgen.REMOVE, ImageOrientationPatient=dicomgen.REMOVE)
    plan = plan_series(facts_of(bare))
    assert plan.volumes == [] and plan.reason.startswith("no geometry")
    single = plan_series(facts_of(stack(tmp_path / "one", 1)))
    assert single.volumes == [] and single.left_out == ["volume: a single image, no volume"]
    assert plan_series([]).reason == "no instances"
    assert "not local yet" in plan_series([], not_local=3).reason


def test_two_instances_at_one_position_are_a_defined_outcome(tmp_path: Path) -> None:
    paths = stack(tmp_path / "a", 4)
    ds = pydicom.dcmread(paths[0])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()  # another object at the same place
    ds.InstanceNumber = 99
    paths.append(dicomgen.write(tmp_path / "dup.dcm", ds))
    [volume] = plan_series(facts_of(paths)).volumes
    assert volume.slices_per_volume == 4 and ds.SOPInstanceUID not in {s.sop_uid for s in volume.slices}
    assert f"1 other objects at positions already filled left out: {ds.SOPInstanceUID}" in volume.notes


def test_uneven_repetitions_are_no_volume_and_say_why(tmp_path: Path) -> None:
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    paths = stack(tmp_path / "1", 4, study=study, series=series, TemporalPositionIdentifier=1)
    paths += stack(tmp_path / "2", 3, study=study, series=series, TemporalPositionIdentifier=2)  # one missing
    plan = plan_series(facts_of(paths))
    assert plan.volumes == [] and "repeated positions with uneven counts" in plan.left_out[0]


def test_per_slice_rescale_makes_float_voxels(tmp_path: Path) -> None:
    paths = stack(tmp_path, 3, per_slice={k: {"RescaleSlope": k + 1} for k in range(3)})
    [volume] = plan_series(facts_of(paths)).volumes
    assert volume.per_slice_rescale and not volume.raw
    assert nifti.voxel_type(volume)[0] == nifti.FLOAT32


def test_header_reads_back_with_nibabel_and_nifti2_beyond_int16(tmp_path: Path) -> None:
    [volume] = plan_series(facts_of(stack(tmp_path, 3))).volumes
    header = nib.Nifti1Header.from_fileobj(_BytesIO(nifti.header(volume)))
    assert header["vox_offset"] == 352 and header.get_data_dtype() == np.dtype("<u2")
    assert (header["sform_code"], header["qform_code"]) == (1, 1)
    assert np.allclose(header.get_sform(), volume.affine) and np.allclose(header.get_qform(), volume.affine)
    assert header.get_slope_inter() == (1.0, -1024.0)
    volume.columns = 40_000
    assert nifti.needs_nifti2(volume) and nifti.header_size(volume) == 544
    header2 = nib.Nifti2Header.from_fileobj(_BytesIO(nifti.header(volume)))
    assert header2.get_data_shape() == (40_000, 4, 3) and np.allclose(header2.get_sform(), volume.affine)


def test_facts_round_trip_and_enhanced_ct_frames() -> None:
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))
    facts = extract(ds)
    assert len(facts.frames) == 2 and facts.served_raw
    assert InstanceFacts.from_json(facts.to_json()) == facts
    [volume] = plan_series([(1, str(ds.SOPInstanceUID), facts)]).volumes
    # Its orientation's normal points to the feet: frame 2 (z = -149) comes first along it.
    assert volume.slices_per_volume == 2 and [s.frame for s in volume.slices] == [1, 0]  # type: ignore[union-attr]
    assert np.allclose(volume.affine @ [0, 0, 1, 1], [*(LPS_TO_RAS @ [99.5, -301.5, -159.0]), 1])


# ----------------------------------------------------------------------------- through the mount's operations

@pytest.fixture
def archive_of(tmp_path: Path):  # type: ignore[no-untyped-def]
    archives = []

    def make(paths: list[Path]) -> Mount:
        archive = open_archive(tmp_path / "data")
        archives.append(archive)
        run_import(archive, sorted({p.parent for p in paths}), workers=1, progress=False)
        return Mount(archive, tmp_path / "derived")

    yield make
    for archive in archives:
        archive.close()


def _series_path(mount: Mount) -> tuple[str, ...]:
    patient = mount.names("patients")[0]
    study = next(n for n in mount.names("patients", patient) if n != "patient.json")
    series = next(n for n in mount.names("patients", patient, study) if n not in ("study.json", "derived"))
    return "patients", patient, study, series


def test_the_mount_serves_the_volume_from_the_stored_bytes(tmp_path: Path, archive_of) -> None:  # type: ignore[no-untyped-def]
    paths = stack(tmp_path / "src", 5)
    mount = archive_of(paths)
    folder = _series_path(mount)
    assert {"volume.nii", "volume.json"} <= set(mount.names(*folder))
    attr = mount.lookup(*folder, "volume.nii")
    data = mount.read(attr.st_ino)
    assert len(data) == attr.st_size == 352 + 3 * 4 * 5 * 2
    image = nib.Nifti1Image.from_bytes(data)
    assert_positions(image, paths)
    assert image.get_fdata()[0, 0, 0] == 100 - 1024  # the rescale travels in scl_slope/scl_inter
    sidecar = json.loads(mount.read(mount.lookup(*folder, "volume.json").st_ino))
    uids = [str(pydicom.dcmread(p).SOPInstanceUID) for p in sorted(paths, key=lambda p: int(p.stem.split("-")[-1]))]
    assert sidecar["SOPInstanceUIDs"] == uids and sidecar["ConversionSoftware"] == "dicomfs"
    summary = json.loads(mount.read(mount.lookup(*folder, "series.json").st_ino))
    assert summary["Volume"]["Volumes"][0]["Dimensions"] == [3, 4, 5]
    # The same inode, the same bytes, in the other layouts.
    study_uid = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
    series_uid = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    assert mount.lookup("studies", study_uid, series_uid, "volume.nii").st_ino == attr.st_ino


def test_a_range_read_maps_onto_the_slices(tmp_path: Path, archive_of) -> None:  # type: ignore[no-untyped-def]
    mount = archive_of(stack(tmp_path / "src", 4))
    inode = mount.lookup(*_series_path(mount), "volume.nii").st_ino
    whole = mount.read(inode)

    async def ranged() -> list[bytes]:
        info = await mount.ops.open(inode, 0, None)
        try:
            return [await mount.ops.read(info.fh, off, size) for off, size in ((0, 7), (350, 30), (371, 5), (400, 999))]
        finally:
            await mount.ops.release(info.fh)

    assert mount.run(ranged) == [whole[0:7], whole[350:380], whole[371:376], whole[400:]]


def test_per_slice_rescale_is_decoded_once_into_the_cache(tmp_path: Path, archive_of) -> None:  # type: ignore[no-untyped-def]
    from dicomfs.volumes.cache import VolumeCache

    rescales = {k: {"RescaleSlope": 0.5 * (k + 1), "RescaleIntercept": 0} for k in range(3)}
    paths = stack(tmp_path / "src", 3, per_slice=rescales)
    mount = archive_of(paths)
    mount.ops.volume_cache = VolumeCache(tmp_path / "cache", 10 * 2**20)
    attr = mount.lookup(*_series_path(mount), "volume.nii")
    data = mount.read(attr.st_ino)
    assert len(data) == attr.st_size == 352 + 3 * 4 * 3 * 4
    image = nib.Nifti1Image.from_bytes(data)
    assert image.get_data_dtype() == np.dtype("<f4")
    values = image.get_fdata()
    for k in range(3):
        assert values[0, 0, k] == pytest.approx(0.5 * (k + 1) * (100 * (k + 1)))
    assert len(list((tmp_path / "cache").glob("*.nii"))) == 1
    assert mount.read(attr.st_ino) == data  # the second open reads the cached file


def test_a_late_slice_changes_the_volume_and_the_kernel_forgets_its_pages(tmp_path: Path, archive_of) -> None:  # type: ignore[no-untyped-def]
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    first = stack(tmp_path / "a", 3, study=study, series=series, shuffle=False)
    mount = archive_of(first)
    folder = _series_path(mount)
    before = mount.lookup(*folder, "volume.nii")
    info_before = mount.run(mount.ops.open, before.st_ino, 0, None)  # a reader holding the old version
    later = stack(tmp_path / "b", 4, study=study, series=series, shuffle=False)[3:]
    for path in later:
        dicomgen.write(tmp_path / "late" / path.name, pydicom.dcmread(path))
    run_import(mount.archive, [tmp_path / "late"], workers=1, progress=False)
    series_id = mount.archive.db.get_int("SELECT id FROM series WHERE series_uid = ?", (series,))
    refresh = mount.tree.refresh(Changes(0, frozenset({series_id})))
    assert before.st_ino in refresh.contents  # pages dropped, size asked again
    after = mount.lookup(*folder, "volume.nii")
    assert after.st_ino == before.st_ino and after.st_size == before.st_size + 3 * 4 * 2
    assert nib.Nifti1Image.from_bytes(mount.read(after.st_ino)).shape == (3, 4, 4)

    async def old_reader() -> bytes:
        try:
            return await mount.ops.read(info_before.fh, 0, 10_000)
        finally:
            await mount.ops.release(info_before.fh)

    assert nib.Nifti1Image.from_bytes(mount.run(old_reader)).shape == (3, 4, 3)  # never torn


def test_no_volume_means_no_file_and_a_reason_in_series_json(tmp_path: Path, archive_of) -> None:  # type: ignore[no-untyped-def]
    mount = archive_of(stack(tmp_path / "src", 1))
    folder = _series_path(mount)
    assert not [n for n in mount.names(*folder) if n.startswith("volume")]
    summary = json.loads(mount.read(mount.lookup(*folder, "series.json").st_ino))
    assert summary["Volume"] == {"NoVolume": "no stack of two or more slices on one grid",
                                 "LeftOut": ["volume: a single image, no volume"]}


def test_archives_from_before_volumes_are_backfilled(tmp_path: Path, archive_of) -> None:  # type: ignore[no-untyped-def]
    mount = archive_of(stack(tmp_path / "src", 3))
    db = mount.archive.db
    recorded = dict(db.query("SELECT id, volume_facts FROM instances"))
    db.execute("UPDATE instances SET volume_facts = '', facts_version = 0")  # as schema v6 leaves older rows
    assert mount.archive.writer.refresh_volume_facts() == 3
    assert db.get_int("SELECT COUNT(*) FROM instances WHERE facts_version = ?", (FACTS_VERSION,)) == 3
    for instance_id, text in db.query("SELECT id, volume_facts FROM instances"):
        assert InstanceFacts.from_json(text) == InstanceFacts.from_json(recorded[instance_id])
    assert mount.archive.writer.refresh_volume_facts() == 0


def test_volume_inodes_name_their_series() -> None:
    from dicomfs.mount.kinds import VolumePart, entity_of, inode_of, volume_id, volume_of

    inode = inode_of(Kind.VOLUME_TEXT, volume_id(123456, 15, VolumePart.BVEC))
    kind, packed = split_inode(inode)
    assert kind is Kind.VOLUME_TEXT and volume_of(packed) == (123456, 15, VolumePart.BVEC)
    assert entity_of(kind, packed) == 123456


def _image(volume, paths: list[Path]) -> nib.Nifti1Image:  # type: ignore[no-untyped-def]
    """The volume's bytes as the mount would serve them, from the original files."""
    from dicomfs.volumes.source import VolumeLayout, VolumeSource

    by_id = {number: str(path) for number, path in enumerate(paths, 1)}
    source = VolumeSource(VolumeLayout.of(volume), Path("/"), by_id)
    try:
        return nib.Nifti1Image.from_bytes(source.read(0, source.size))
    finally:
        source.close()



class _BytesIO:
    def __new__(cls, data: bytes):  # type: ignore[no-untyped-def]
        import io

        return io.BytesIO(data)


def test_an_index_of_schema_v5_is_upgraded_and_backfilled(tmp_path: Path) -> None:
    from dicomfs.index.schema import SCHEMA_VERSION, migrate
    from dicomfs.volumes.series import series_volumes

    paths = stack(tmp_path / "src", 3)
    archive = open_archive(tmp_path / "data")
    run_import(archive, [tmp_path / "src"], workers=1, progress=False)
    db = archive.db
    with db.transaction():  # back to what schema v5 had
        undo_schema_v7(db)
        db.execute("DROP TABLE volume_plans")
        for column in ("volume_facts", "volume_sidecar", "facts_version"):
            db.execute(f"ALTER TABLE instances DROP COLUMN {column}")
        db.execute("PRAGMA user_version = 5")
    migrate(db)
    assert db.get_int("PRAGMA user_version") == SCHEMA_VERSION == 8
    assert db.query("SELECT DISTINCT volume_facts, facts_version FROM instances") == [("", 0)]
    assert series_volumes(db, 1).plan.volumes == []  # nothing recorded yet: no volume, and no failure
    assert archive.writer.refresh_volume_facts() == 3
    [volume] = series_volumes(db, 1).plan.volumes
    assert volume.slices_per_volume == 3
    assert_positions(_image_from_store(volume, archive), paths)
    archive.close()


def _image_from_store(volume, archive) -> nib.Nifti1Image:  # type: ignore[no-untyped-def]
    from dicomfs.volumes.source import VolumeLayout, VolumeSource

    paths = dict(archive.db.query("SELECT id, file_path FROM instances"))
    source = VolumeSource(VolumeLayout.of(volume), archive.store.root, paths)
    try:
        return nib.Nifti1Image.from_bytes(source.read(0, source.size))
    finally:
        source.close()


def test_opening_a_listed_volume_needs_no_planning(tmp_path: Path, archive_of, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from dicomfs.mount.tree import Tree
    from dicomfs.volumes import series

    mount = archive_of(stack(tmp_path / "src", 4))
    folder = _series_path(mount)
    expected = mount.read(mount.lookup(*folder, "volume.nii").st_ino)  # listed once: kept in the index
    mount.tree = mount.ops.tree = Tree(mount.archive.db)  # a new mount of the same archive

    def no_planning(*args: object, **kwargs: object) -> None:
        raise AssertionError("planned again")

    monkeypatch.setattr(series, "plan_series", no_planning)
    assert mount.read(mount.lookup(*folder, "volume.nii").st_ino) == expected
