"""The layout model: one registry, every kind answered once, no kernel library needed to name things."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import dicomgen

from dicomfs.archive import open_archive
from dicomfs.commands.find import MountPaths
from dicomfs.ingest.files import run_import
from dicomfs.mount.kinds import Kind, Top, inode_of
from dicomfs.mount.layouts import LAYOUTS
from dicomfs.mount.model import Model


def test_every_kind_is_answered_by_exactly_one_layout() -> None:
    claimed = Counter(kind for layout in LAYOUTS for kind in layout.kinds)
    assert set(claimed) == set(Kind)
    assert [kind for kind, count in claimed.items() if count > 1] == []


def test_naming_the_tree_needs_neither_pyfuse3_nor_trio() -> None:
    code = ("import sys, dicomfs.commands.find, dicomfs.mount.model, dicomfs.mount.layouts; "
            "print(sorted(m for m in ('pyfuse3', 'trio', 'PIL', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_find_paths_are_the_names_the_model_lists(tmp_path: Path) -> None:
    """Equal Instance Numbers and namesake studies get suffixes; the paths use them exactly."""
    src = tmp_path / "src"
    first = dicomgen.make_dataset(InstanceNumber=1)
    dicomgen.write(src / "a1.dcm", first)
    dicomgen.write(src / "a2.dcm", dicomgen.make_dataset(  # the same Instance Number in the same series
        StudyInstanceUID=first.StudyInstanceUID, SeriesInstanceUID=first.SeriesInstanceUID, InstanceNumber=1))
    dicomgen.write(src / "b1.dcm", dicomgen.make_dataset())  # a namesake study: same day and description
    archive = open_archive(tmp_path / "data")
    run_import(archive, [src], workers=1, progress=False)
    paths = MountPaths(archive.db, Path("/mnt"))
    instances = [paths.path("instance", i) for (i,) in archive.db.query("SELECT id FROM instances ORDER BY id")]
    assert [p.name for p in instances] == ["001.dcm", "001_2.dcm", "001.dcm"]
    assert [p.parent.parent.name for p in instances] == ["2024-03-01 CT Thorax [ACC123]"] * 2 + \
        ["2024-03-01 CT Thorax [ACC123] (2)"]
    model = Model(archive.db)
    patient = inode_of(Kind.PATIENT, 1)
    assert [n.name for n in model.children(inode_of(Kind.TOP_FOLDER, Top.PATIENTS))] == ["DOE^JOHN [12345]"]
    assert sorted(n.name for n in model.children(patient)) == [
        "2024-03-01 CT Thorax [ACC123]", "2024-03-01 CT Thorax [ACC123] (2)", "patient.json"]
    archive.close()
