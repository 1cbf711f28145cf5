"""A series' frames → the volumes it holds: splits, spatial order, 4D, affine, or why there are none.

Pure: works on ``InstanceFacts`` from the index, opens no file. Geometry comes from
ImagePositionPatient and ImageOrientationPatient only: slices are ordered by their position
along the slice normal, never by InstanceNumber or arrival. What separates frames that cannot
share one grid (size, orientation, echo, phase/magnitude, pixel encoding) splits the series
into volumes named by it; repetitions of every position make a 4D volume, ordered by what
the objects declare (dimension index, temporal position, trigger time, acquisition time,
diffusion b-value), InstanceNumber only as a last resort.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dicomfs.volumes.facts import FrameFacts, InstanceFacts

PLAN_VERSION = 1  # bump when planning changes what a series lists: kept listings are then made again
POSITION_TOLERANCE = 0.01  # mm: positions closer than this along the normal are the same slice
SPACING_TOLERANCE = 0.01  # relative: spacing differences below this are rounding
MAX_VOLUMES = 16  # per series: more splits than this is not a stack worth serving


@dataclass(frozen=True, slots=True)
class Slice:
    """One frame of one instance, as a slice of a volume."""

    instance_id: int
    sop_uid: str
    frame: int
    facts: InstanceFacts

    @property
    def frame_facts(self) -> FrameFacts:
        return self.facts.frames[self.frame]


@dataclass(slots=True)
class VolumePlan:
    """One volume: its grid, where each slice comes from (None: a missing slice, zeros)."""

    name: str  # file stem: "volume", or "volume_<what separates it>"
    columns: int
    rows: int
    slices_per_volume: int
    timepoints: int
    affine: np.ndarray  # 4x4, voxel (i, j, k) → RAS mm
    spacing: tuple[float, float, float]  # column, row, slice step (mm)
    slices: list[Slice | None]  # k fastest, then t
    slope: float = 1.0
    intercept: float = 0.0
    per_slice_rescale: bool = False  # voxels become float32 (value = stored * slope + intercept)
    notes: list[str] = field(default_factory=list)
    b_values: list[float] | None = None
    gradients: list[tuple[float, float, float]] | None = None  # LPS, per timepoint
    repetition: str = ""  # what the fourth dimension is

    @property
    def first(self) -> Slice:
        return next(s for s in self.slices if s is not None)

    @property
    def raw(self) -> bool:
        """Served straight from the stored pixel bytes (else decoded once into the cache)."""
        return not self.per_slice_rescale and all(s is None or s.facts.served_raw for s in self.slices)


@dataclass(slots=True)
class SeriesPlan:
    volumes: list[VolumePlan]
    reason: str = ""  # why there is no volume (or why frames were left out)
    left_out: list[str] = field(default_factory=list)  # groups of frames that are no volume, and why

    def summary(self) -> dict[str, object]:
        """What ``series.json`` says under ``Volume``."""
        out: dict[str, object] = {}
        if self.volumes:
            out["Volumes"] = [_describe(v) for v in self.volumes]
        if self.reason:
            out["NoVolume"] = self.reason
        if self.left_out:
            out["LeftOut"] = self.left_out
        return out


def _describe(volume: VolumePlan) -> dict[str, object]:
    entry: dict[str, object] = {
        "File": f"{volume.name}.nii",
        "Dimensions": [volume.columns, volume.rows, volume.slices_per_volume]
        + ([volume.timepoints] if volume.timepoints > 1 else []),
        "VoxelSize": [round(v, 6) for v in volume.spacing],
    }
    if volume.repetition:
        entry["FourthDimension"] = volume.repetition
    if volume.notes:
        entry["Notes"] = volume.notes
    return entry


# ------------------------------------------------------------------------------------ planning

def plan_series(instances: Sequence[tuple[int, str, InstanceFacts]], *, not_local: int = 0) -> SeriesPlan:
    """Plan the volumes of a series from (instance id, SOP Instance UID, facts) of its instances.

    ``not_local``: instances listed from a remote PACS and not fetched yet (no volume until they are).
    """
    if not_local:
        return SeriesPlan([], f"{not_local} instances are not local yet: the volume appears once they are fetched")
    frames = [Slice(instance_id, sop_uid, index, facts)
              for instance_id, sop_uid, facts in instances if facts.has_pixels
              for index in range(len(facts.frames))]
    if not frames:
        return SeriesPlan([], "no image data" if instances else "no instances")
    groups: dict[tuple[tuple[str, str], ...], list[Slice]] = {}
    missing = 0
    for s in frames:
        if _has_geometry(s.frame_facts):
            groups.setdefault(_split_key(s), []).append(s)
        else:
            missing += 1
    if missing == len(frames):
        return SeriesPlan([], "no geometry: ImagePositionPatient, ImageOrientationPatient or PixelSpacing missing")
    left_out = [f"{missing} frames without geometry"] if missing else []
    names = _names(list(groups))
    volumes: list[VolumePlan] = []
    for key, members in groups.items():
        name = names[key]
        if len(members) < 2:
            left_out.append(f"{name}: a single image, no volume")
            continue
        result = _plan_stack(name, members)
        if isinstance(result, str):
            left_out.append(f"{name}: {result}")
        else:
            volumes.append(result)
    if len(volumes) > MAX_VOLUMES:
        return SeriesPlan([], f"{len(volumes)} separate stacks: too many to serve as volumes", left_out)
    volumes.sort(key=lambda v: v.name)
    reason = "" if volumes else "no stack of two or more slices on one grid"
    return SeriesPlan(volumes, reason, left_out)


def _has_geometry(f: FrameFacts) -> bool:
    return f.position is not None and f.orientation is not None and f.spacing is not None and _normal(
        f.orientation) is not None


@functools.lru_cache(maxsize=1024)
def _normal(orientation: tuple[float, ...]) -> tuple[float, float, float] | None:
    """The unit slice normal (row direction x column direction); None for degenerate cosines.

    Plain Python and cached: a series has a handful of distinct orientations, and numpy's
    cross product costs more than the rest of planning a slice.
    """
    ax, ay, az, bx, by, bz = orientation
    nx, ny, nz = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
    length = math.sqrt(nx * nx + ny * ny + nz * nz)
    return None if length < 1e-3 else (nx / length, ny / length, nz / length)


# What splits a series, in naming order; each part is (label, value) and only parts that
# differ between groups appear in the names.
def _split_key(s: Slice) -> tuple[tuple[str, str], ...]:
    facts, frame = s.facts, s.frame_facts
    assert frame.orientation is not None and frame.spacing is not None
    encoding = f"{facts.bits_allocated}{'s' if facts.signed else 'u'}{facts.samples}{facts.float_pixels}"
    image_type = facts.image_type.upper().split("\\")
    phase = "phase" if "P" in image_type[2:3] or "PHASE" in image_type else ""
    return (
        ("size", f"{facts.columns}x{facts.rows}"),
        ("orientation", _orientation_name(frame.orientation)),
        ("echo", "" if frame.echo_number is None and frame.echo_time is None
         else f"{frame.echo_number or 0}:{_round(frame.echo_time)}"),
        ("phase", phase),
        ("spacing", f"{_round(frame.spacing[0])}x{_round(frame.spacing[1])}"),
        ("encoding", encoding),
        ("stack", frame.stack or ""),
    )


@functools.lru_cache(maxsize=1024)
def _orientation_name(orientation: tuple[float, ...]) -> str:
    """axial, coronal or sagittal by the dominant axis of the normal, plus the exact cosines."""
    normal = _normal(orientation)
    assert normal is not None
    magnitudes = [abs(v) for v in normal]
    axis = magnitudes.index(max(magnitudes))
    exact = ",".join(f"{v:.4f}" for v in orientation)
    return f"{('sagittal', 'coronal', 'axial')[axis]}|{exact}"


def _round(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _names(keys: list[tuple[tuple[str, str], ...]]) -> dict[tuple[tuple[str, str], ...], str]:
    """File stems: 'volume' alone, else what differs between the groups, BIDS-like."""
    if len(keys) == 1:
        return {keys[0]: "volume"}
    varying = [index for index in range(len(keys[0])) if len({key[index][1] for key in keys}) > 1]
    names: dict[tuple[tuple[str, str], ...], str] = {}
    for key in keys:
        parts = []
        for index in varying:
            label, value = key[index]
            parts.append(_part(label, value, [k[index][1] for k in keys]))
        names[key] = "volume_" + "_".join(parts)
    # Orientation names can still collide (two oblique stacks): number them.
    seen: dict[str, int] = {}
    for key, name in names.items():
        count = seen.get(name, 0)
        seen[name] = count + 1
        if count:
            names[key] = f"{name}-{count + 1}"
    return names


def _part(label: str, value: str, values: list[str]) -> str:
    if label == "size":
        return value
    if label == "orientation":
        return value.split("|")[0]
    if label == "echo":
        ranks = sorted({v for v in values}, key=lambda v: (_float(v.split(":")[0]), _float(v.split(":")[1])))
        return f"echo-{ranks.index(value) + 1}"
    if label == "phase":
        return "ph" if value else "mag"
    if label == "stack":
        return f"stack-{value or 'none'}"
    if label == "spacing":
        return f"pixel-{value}"
    return f"{label}-{value}"


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def _plan_stack(name: str, members: list[Slice]) -> VolumePlan | str:
    first = members[0].frame_facts
    assert first.orientation is not None and first.spacing is not None
    unit = _normal(first.orientation)
    assert unit is not None
    normal = np.asarray(unit)
    along = np.array([s.frame_facts.position for s in members], dtype=float) @ normal
    order = np.argsort(along, kind="stable")
    # Cluster positions along the normal.
    locations: list[list[int]] = []
    last = -math.inf
    for index in order:
        if along[index] - last > POSITION_TOLERANCE or not locations:
            locations.append([int(index)])
            last = float(along[index])
        else:
            locations[-1].append(int(index))
    counts = {len(members_at) for members_at in locations}
    if len(counts) != 1:
        split = _split_by_acquisition(name, members, locations)
        if split is not None:
            return split
        return (f"repeated positions with uneven counts ({min(counts)} to {max(counts)} frames per position): "
                "not one stack and not a time series")
    timepoints = counts.pop()
    if len(locations) == 1 and timepoints < 2:
        return "a single image, no volume"
    # Order each location's frames in time, the same way everywhere.
    timed = [sorted((members[i] for i in at), key=_time_key) for at in locations]
    repetition = _repetition(timed) if timepoints > 1 else ""
    positions = np.array([np.asarray(members[at[0]].frame_facts.position) for at in locations])
    distances = along[[at[0] for at in locations]]
    notes: list[str] = []
    slots: list[int | None] = list(range(len(locations)))  # location index of each output slice
    if len(locations) > 1:
        steps = np.diff(distances)
        step = float(np.min(steps))
        if np.max(steps) - step > SPACING_TOLERANCE * step + 0.001:
            multiples = steps / step
            if np.all(np.abs(multiples - np.round(multiples)) < 0.05) and np.sum(np.round(multiples)) < 4 * len(steps):
                slots = [0]
                for index, multiple in enumerate(np.round(multiples).astype(int)):
                    slots.extend([None] * (multiple - 1))
                    slots.append(index + 1)
                missing = len(slots) - len(locations)
                notes.append(f"{missing} missing slices (gaps of {step:.4g} mm steps) filled with zeros "
                             "to keep the true geometry")
            else:
                notes.append(f"uneven slice spacing ({step:.4g} to {float(np.max(steps)):.4g} mm): "
                             "positions are approximated by the mean step")
        # The slice step as a vector: first to last position, sheared where the stack is tilted.
        slice_vector = (positions[-1] - positions[0]) / (len(slots) - 1)
    else:
        thickness = first.thickness or 1.0
        slice_vector = normal * thickness
    facts = members[0].facts
    row_dir, column_dir = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    row_spacing, column_spacing = first.spacing
    lps = np.eye(4)
    lps[:3, 0] = row_dir * column_spacing  # i: along a row (increasing column index)
    lps[:3, 1] = column_dir * row_spacing  # j: down the columns (increasing row index)
    lps[:3, 2] = slice_vector
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS → RAS
    tilt = _shear(slice_vector, normal)
    if tilt > 0.01:
        notes.append(f"slices are sheared by {tilt:.2f} degrees against the normal (gantry tilt): "
                     "the sform maps each voxel to its true place")
    ordered: list[Slice | None] = []
    for t in range(timepoints):
        for slot in slots:
            ordered.append(None if slot is None else timed[slot][t])
    rescales = {(s.frame_facts.slope, s.frame_facts.intercept) for s in members}
    per_slice = len(rescales) > 1
    slope, intercept = (1.0, 0.0) if per_slice else rescales.pop()
    plan = VolumePlan(
        name=name, columns=facts.columns, rows=facts.rows, slices_per_volume=len(slots), timepoints=timepoints,
        affine=affine, spacing=(column_spacing, row_spacing, float(np.linalg.norm(slice_vector))),
        slices=ordered, slope=slope, intercept=intercept, per_slice_rescale=per_slice, notes=notes,
        repetition=repetition,
    )
    if per_slice:
        notes.append("rescale differs between slices: voxels are float32 values after rescale")
    if timepoints > 1 and all(s.frame_facts.b_value is not None for s in members):
        plan.b_values = [float(timed[0][t].frame_facts.b_value or 0.0) for t in range(timepoints)]
        plan.gradients = [timed[0][t].frame_facts.gradient or (0.0, 0.0, 0.0) for t in range(timepoints)]
    return plan


def _split_by_acquisition(name: str, members: list[Slice], locations: list[list[int]]) -> VolumePlan | None:
    """Uneven repetitions: one stack per acquisition number, when that makes each a stack."""
    numbers = {s.facts.acquisition_number for s in members}
    if len(numbers) < 2 or None in numbers:
        return None
    # Only the first acquisition is served under this name; the planner is called per group,
    # so more would need names: keep the largest complete one.
    best: list[Slice] = []
    for number in sorted(numbers, key=lambda n: n or 0):
        subset = [s for s in members if s.facts.acquisition_number == number]
        if len(subset) > len(best):
            best = subset
    if len(best) == len(members):
        return None
    result = _plan_stack(name, best)
    if isinstance(result, str):
        return None
    result.notes.append(f"{len(members) - len(best)} frames of other acquisitions at the same positions left out")
    return result


def _time_key(s: Slice) -> tuple[float, ...]:
    f = s.frame_facts
    return (
        *(f.dimension_index or ()),
        f.temporal if f.temporal is not None else math.inf,
        f.trigger_time if f.trigger_time is not None else math.inf,
        f.b_value if f.b_value is not None else math.inf,
        f.acquisition_time if f.acquisition_time is not None else math.inf,
        s.facts.instance_number if s.facts.instance_number is not None else math.inf,
        s.frame,
    )


def _repetition(timed: list[list[Slice]]) -> str:
    frames = [s.frame_facts for s in timed[0]]
    if all(f.b_value is not None for f in frames) and len({f.b_value for f in frames}) + len(
            {f.gradient for f in frames}) > 2:
        return "diffusion directions (see .bval and .bvec)"
    if all(f.temporal is not None for f in frames):
        return "temporal positions"
    if all(f.trigger_time is not None for f in frames) and len({f.trigger_time for f in frames}) > 1:
        return "cardiac trigger times"
    if all(f.acquisition_time is not None for f in frames) and len({f.acquisition_time for f in frames}) > 1:
        return "acquisition times"
    if all(f.dimension_index for f in frames):
        return "dimension index"
    return "repetitions in instance number order"


def _shear(slice_vector: np.ndarray, normal: np.ndarray) -> float:
    length = float(np.linalg.norm(slice_vector))
    if length == 0:
        return 0.0
    cosine = abs(float(np.dot(slice_vector, normal))) / length
    return math.degrees(math.acos(min(cosine, 1.0)))
