"""Query-language latency over an index of 1,000,000 instances: study-level queries in process and end to end.

The index is filled directly with SQL by ``bench_find.fill`` (patients x 2 studies x 4 series
x 25 instances), then given a realistic spread in place: CT, PET/CT, MR and PET/MR studies with
series descriptions that name their tracer or sequence, study dates over 2018–2025, varied
patient names, a ``diagnosis`` tag (AD/MCI/CN) on ~10 % of studies and other tags on patients
and series, three projects of a few hundred members (studies, patients, series), and derived
data on some series and studies.

Each query is timed in this process with ``query_language.run`` (warm: one untimed run first), next
to the bare SQL a person would write by hand for the same answer (``Case.baseline``, same ids
checked), alternating the two for ``--repeat`` rounds. Then the end-to-end wall time of one
``dicomfs find --count`` next to ``python -c pass`` (interpreter start). ``--plans`` prints the
generated SQL and its query plan for every query (always for a query that misses the target);
``--profile DIR`` records one ``dicomfs find`` run with py-spy (its start-up, mostly imports).

Target: every study-level query answers in < 200 ms in process.

    python -m bench.bench_query [--instances 1000000] [--repeat 15] [--plans]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.bench_find import fill
from bench.common import Timing, info, report
from dicomfs.archive import open_archive
from dicomfs.index import query_language
from dicomfs.index.cfind import fold_name
from dicomfs.index.db import Database

TARGET_MS = 200.0
END_TO_END = "StudyDate>=20240101 and Modality=PT"


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    text: str  # in the query language, at study level
    baseline: str  # the same answer in hand-written SQL, ordered by study id


CASES = [
    Case("modality", "Modality=PT",
         "SELECT DISTINCT st.id FROM studies st JOIN series se ON se.study_id = st.id"
         " WHERE se.modality = 'PT' ORDER BY st.id"),
    Case("date_and_modality", "StudyDate>=20240101 and Modality=PT",
         "SELECT DISTINCT st.id FROM studies st JOIN series se ON se.study_id = st.id"
         " WHERE st.study_date >= '20240101' AND se.modality = 'PT' ORDER BY st.id"),
    Case("patient_name", "PatientName=SMI*",
         "SELECT st.id FROM studies st JOIN patients p ON p.id = st.patient_id"
         " WHERE p.patient_name LIKE 'SMI%' ORDER BY st.id"),
    Case("tag", "tag:diagnosis=AD",
         "SELECT st.id FROM studies st JOIN tags t ON t.level = 'study' AND t.entity_id = st.id"
         " WHERE t.key = 'diagnosis' AND t.value = 'AD' ORDER BY st.id"),
    Case("project_and_modality", "project:TRIAL1 and Modality=PT",
         "SELECT DISTINCT st.id FROM projects pr"
         " JOIN project_members m ON m.project_id = pr.id AND m.level = 'study'"
         " JOIN studies st ON st.id = m.entity_id JOIN series se ON se.study_id = st.id"
         " WHERE pr.name = 'TRIAL1' AND se.modality = 'PT' ORDER BY st.id"),
    Case("description", 'SeriesDescription~"fdg"',
         "SELECT DISTINCT st.id FROM studies st JOIN series se ON se.study_id = st.id"
         " WHERE se.series_description LIKE '%fdg%' ORDER BY st.id"),
    Case("has_derived", "has:derived",
         "SELECT entity_id FROM derived WHERE level = 'study'"
         " UNION SELECT se.study_id FROM derived d JOIN series se ON se.id = d.entity_id"
         " WHERE d.level = 'series' ORDER BY 1"),
    Case("not_modality_and_date", "not Modality=CT and StudyDate>=20230101",
         "SELECT st.id FROM studies st WHERE st.study_date >= '20230101'"
         " AND NOT EXISTS (SELECT 1 FROM series se WHERE se.study_id = st.id AND se.modality = 'CT')"
         " ORDER BY st.id"),
    Case("slice_thickness", "SliceThickness<=1.5",
         "SELECT DISTINCT se.study_id FROM series se JOIN instances i ON i.series_id = se.id"
         " WHERE i.slice_thickness <= 1.5 ORDER BY 1"),
    Case("echo_time_and_modality", "EchoTime>=80 and Modality=MR",
         "SELECT DISTINCT se.study_id FROM series se WHERE se.modality = 'MR' AND se.study_id IN"
         " (SELECT se2.study_id FROM series se2 JOIN instances i ON i.series_id = se2.id WHERE i.echo_time >= 80)"
         " ORDER BY 1"),
    Case("or_groups", "(Modality=PT or Modality=MR) and (tag:diagnosis=AD or tag:diagnosis=MCI)",
         "SELECT DISTINCT st.id FROM studies st JOIN series se ON se.study_id = st.id"
         " JOIN tags t ON t.level = 'study' AND t.entity_id = st.id"
         " WHERE se.modality IN ('PT', 'MR') AND t.key = 'diagnosis' AND t.value IN ('AD', 'MCI')"
         " ORDER BY st.id"),
]

# ----------------------------------------------------------------------------- the index

SURNAMES = ["SMITH", "SMIRNOV", "SMIT", "DOE", "ROE", "JOHNSON", "MÜLLER", "SCHMIDT", "YAMADA", "TANAKA",
            "GARCIA", "MARTIN", "NGUYEN", "KOWALSKI", "NOWAK", "ROSSI", "HANSEN", "JENSEN", "DUBOIS", "SILVA",
            "OLSEN", "LARSEN", "KIM", "PARK", "CHEN", "WANG", "BROWN", "WILSON", "TAYLOR", "SCHNEIDER"]
GIVEN = ["ANNA", "JOHN", "MARIA", "PETER", "EVA", "HANS", "YUKI", "LUIS", "SARA", "OLE", "MINH", "JAN"]
# Study kinds: weight, study description, per series (modality, description choices); 4 series each.
TRACERS = ["[18F]FDG", "FDG", "fdg", "PIB", "Florbetaben", "FLT"]
KINDS = [
    (35, "CT Thorax Abdomen", [("CT", ["Topogram 0.6 T20f"]), ("CT", ["Thorax 1.0 B70f", "Thorax 3.0 Br40"]),
                               ("CT", ["Abdomen 3.0 B30f", "Abdomen 5.0 Br36"]), ("CT", ["Patient Protocol"])]),
    (35, "PET/CT Whole Body", [("CT", ["Topogram 0.6 T20f"]), ("CT", ["CT WB 3.0 B30f ({tracer})"]),
                               ("PT", ["PET WB {tracer} AC", "PET_WB_{tracer}_AC"]), ("PT", ["PET WB {tracer} NAC"])]),
    (20, "MR Brain", [("MR", ["t1_mprage_sag_iso"]), ("MR", ["t2_flair_tra", "t2_tse_tra"]),
                      ("MR", ["ep2d_diff_3scan_trace"]), ("MR", ["ep2d_bold_rest", "swi_tra"])]),
    (10, "PET/MR Brain", [("MR", ["t1_mprage_sag_iso"]), ("MR", ["MRAC_UTE"]),
                          ("PT", ["PET Brain {tracer}"]), ("PT", ["PET Brain {tracer} dynamic"])]),
]


def spread(db: Database, seed: int) -> None:
    """Rewrite the uniform rows of ``fill`` into a realistic mix of names, dates, modalities, descriptions."""
    rng = random.Random(seed)
    patients = [r[0] for r in db.query("SELECT id FROM patients ORDER BY id")]
    names = [(f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}", rng.choice("FM"), p) for p in patients]
    db.conn.executemany("UPDATE patients SET patient_name = ?, patient_name_folded = ?, patient_sex = ? WHERE id = ?",
                        [(name, fold_name(name), sex, p) for name, sex, p in names])
    series: dict[int, list[int]] = {}
    for series_id, study_id in db.query("SELECT id, study_id FROM series ORDER BY study_id, id"):
        series.setdefault(study_id, []).append(series_id)
    first, days = date(2018, 1, 1), (date(2025, 12, 31) - date(2018, 1, 1)).days
    weights = [k[0] for k in KINDS]
    studies, rows = [], []
    for study_id, ids in series.items():
        _, description, layout = rng.choices(KINDS, weights)[0]
        day = (first + timedelta(days=rng.randrange(days + 1))).strftime("%Y%m%d")
        tracer = rng.choice(TRACERS)
        studies.append((day, description, study_id))
        for number, (series_id, (modality, names)) in enumerate(zip(ids, layout, strict=True), 1):
            rows.append((modality, rng.choice(names).format(tracer=tracer), day, number, series_id))
    db.conn.executemany("UPDATE studies SET study_date = ?, study_description = ? WHERE id = ?", studies)
    db.conn.executemany("UPDATE series SET modality = ?, series_description = ?, series_date = ?,"
                        " series_number = ? WHERE id = ?", rows)
    # Acquisition values as the modalities have them: every image a slice thickness, MR echo times.
    db.execute("UPDATE instances SET slice_thickness = CASE (series_id % 5) WHEN 0 THEN 0.6 WHEN 1 THEN 1.0"
               " WHEN 2 THEN 3.0 ELSE 5.0 END")
    db.execute("UPDATE instances SET echo_time = CASE (series_id % 3) WHEN 0 THEN 2.3 WHEN 1 THEN 96.0 ELSE 12.0 END"
               " WHERE series_id IN (SELECT id FROM series WHERE modality = 'MR')")


def organise(db: Database, seed: int) -> dict[str, int]:
    """Tags, projects and derived data, as a research group leaves them; returns row counts."""
    rng = random.Random(seed + 1)
    now = time.time()
    studies = [r[0] for r in db.query("SELECT id FROM studies ORDER BY id")]
    patients = [r[0] for r in db.query("SELECT id FROM patients ORDER BY id")]
    series = db.query("SELECT se.id, se.modality, se.series_uid FROM series se ORDER BY se.id")
    tags = [("study", s, "diagnosis", rng.choices(["AD", "MCI", "CN"], [3, 3, 4])[0], now)
            for s in rng.sample(studies, len(studies) // 10)]
    tags += [("patient", p, "consent", "yes", now) for p in rng.sample(patients, len(patients) // 5)]
    tags += [("series", s[0], "qc", rng.choice(["pass", "pass", "fail"]), now)
             for s in rng.sample(series, len(series) // 7)]
    db.conn.executemany("INSERT INTO tags (level, entity_id, key, value, set_at) VALUES (?, ?, ?, ?, ?)", tags)
    members = {"TRIAL1": ("study", rng.sample(studies, min(len(studies), 300))),
               "TRIAL2": ("patient", rng.sample(patients, min(len(patients), 200))),
               "COHORT3": ("series", [s[0] for s in rng.sample(series, min(len(series), 500))])}
    for name, (level, ids) in members.items():
        db.execute("INSERT INTO projects (name, description, created_at) VALUES (?, '', ?)", (name, now))
        project = db.last_rowid()
        db.conn.executemany("INSERT INTO project_members (project_id, level, entity_id, added_at) VALUES (?, ?, ?, ?)",
                            [(project, level, i, now) for i in ids])
    pet = [s for s in series if s[1] == "PT"]
    derived = [("series", s[0], s[2], "suv.nii.gz", "map", f"series/{s[0]}/suv.nii.gz", 4_000_000, now, now)
               for s in rng.sample(pet, len(pet) // 10)]
    uids = dict(db.query("SELECT id, study_uid FROM studies"))
    derived += [("study", s, uids[s], "voi.json", "voi", f"study/{s}/voi.json", 2_000, now, now)
                for s in rng.sample(studies, len(studies) // 50)]
    db.conn.executemany("INSERT INTO derived (level, entity_id, origin_uid, name, kind, file_path, size, created_at,"
                        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", derived)
    return {"tags": len(tags), "project members": sum(len(ids) for _, ids in members.values()),
            "derived": len(derived)}


# ----------------------------------------------------------------------------- measuring


def _clock(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(db: Database, case: Case, repeat: int) -> tuple[Timing, Timing, list[int], list[int]]:
    """Both ways warm, then alternating: (language, baseline, ids by language, ids by baseline)."""
    ours = query_language.run(db, case.text)
    theirs = [row[0] for row in db.query(case.baseline)]
    by_language, by_hand = Timing(), Timing()
    for _ in range(repeat):
        by_language.runs.append(_clock(lambda: query_language.run(db, case.text)))
        by_hand.runs.append(_clock(lambda: db.query(case.baseline)))
    return by_language, by_hand, ours, theirs


def generated_sql(db: Database, text: str) -> tuple[str, object]:
    """The statement and bindings ``query_language.run`` executes, caught with apsw's exec trace."""
    seen: list[tuple[str, object]] = []

    def trace(_cursor: object, sql: str, bindings: object) -> bool:
        seen.append((sql, bindings))
        return True

    db.conn.exec_trace = trace
    try:
        query_language.run(db, text)
    finally:
        db.conn.exec_trace = None
    return seen[-1]


def explain(db: Database, sql: str, bindings: object = ()) -> str:
    """EXPLAIN QUERY PLAN as an indented tree."""
    depth: dict[int, int] = {0: -1}
    lines = []
    for node, parent, _, detail in db.query(f"EXPLAIN QUERY PLAN {sql}", bindings or ()):
        depth[node] = depth.get(parent, -1) + 1
        lines.append("      " + "  " * depth[node] + detail)
    return "\n".join(lines)


def find_command() -> list[str]:
    """``dicomfs``, but the console script itself when it sits next to this interpreter: a pyenv
    shim on PATH adds ~40 ms of shell to every start, which ``python -c pass`` would not pay."""
    if "DICOMFS_BENCH_CMD" not in os.environ and (script := Path(sys.executable).with_name("dicomfs")).exists():
        return [str(script)]
    return common.DICOMFS


def wait_for_find(cmd: list[str], seconds: float) -> bool:
    """Whether ``dicomfs find`` exists, polling up to ``seconds`` for it to appear."""
    deadline = time.monotonic() + seconds
    while True:
        if subprocess.run([*cmd, "find", "--help"], capture_output=True).returncode == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))


def end_to_end(data: Path, expected: int, repeat: int, wait: float, profile: Path | None) -> bool:
    """Report ``dicomfs find --count`` against interpreter start; False if its count is wrong."""
    cmd = find_command()
    if not wait_for_find(cmd, wait):
        info(f"{' '.join(cmd)} has no 'find' command: no end-to-end figure (--wait-find S to wait for it)")
        return True
    find = [*cmd, "--log-level", "WARNING", "find", "--count", END_TO_END, "--data-dir", str(data)]
    start = [sys.executable, "-c", "pass"]
    env = common._isolated_env()
    answer = subprocess.run(find, capture_output=True, text=True, env=env, check=True).stdout.strip()
    same = answer == str(expected)
    subprocess.run(start, check=True)
    by_find, by_python = Timing(), Timing()
    for _ in range(repeat):
        by_find.runs.append(_clock(lambda: subprocess.run(find, check=True, capture_output=True, env=env)))
        by_python.runs.append(_clock(lambda: subprocess.run(start, check=True, capture_output=True, env=env)))
    ms, base_ms = by_find.median * 1e3, by_python.median * 1e3
    report("query.find_cli", f"{ms:.0f} ms median wall time of `dicomfs find --count '{END_TO_END}'` "
           f"({answer} studies{'' if same else f', LANGUAGE.RUN FOUND {expected}'}; {by_find.spread()}; "
           "the in-process target does not apply)",
           ratio=ms / base_ms, baseline=f"python -c pass {base_ms:.0f} ms (interpreter start)")
    if profile is not None:
        _profile(find, profile, env)
    return same


def _profile(cmd: list[str], out_dir: Path, env: dict[str, str]) -> None:
    """py-spy over one ``dicomfs find`` run: where its time goes besides the query."""
    if shutil.which("py-spy") is None:
        info("py-spy is not installed (pip install py-spy): no profile")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / "find-cli.collapsed"
    common.run(["py-spy", "record", "--format", "raw", "--rate", "1000", "--output", str(output), "--", *cmd],
               env=env)
    info(f"profile {output}:\n{common.summarize_profile(output)}")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000, metavar="N",
                        help="instances in the index (default 1000000; 100 per study)")
    parser.add_argument("--seed", type=int, default=1, help="of the spread of names, dates, tags (default 1)")
    parser.add_argument("--plans", action="store_true", help="print every query's generated SQL and plan")
    parser.add_argument("--wait-find", type=float, default=0.0, metavar="S",
                        help="poll up to S seconds for a 'dicomfs find' command to exist (default 0)")
    common.add_common_options(parser)
    parser.set_defaults(repeat=15)
    args = parser.parse_args(argv)

    failed = False
    with common.scratch(args.scratch, keep=args.keep, need_gib=1.0) as work:
        info(common.machine_summary(work))
        data = work / "data"
        started = time.perf_counter()
        count, studies = fill(data, args.instances)
        archive = open_archive(data)
        db = archive.db
        try:
            with db.transaction():
                spread(db, args.seed)
                rows = organise(db, args.seed)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            info(f"filled an index of {count} instances, {studies} studies, "
                 f"{', '.join(f'{n} {what}' for what, n in rows.items())} in {time.perf_counter() - started:.0f} s; "
                 f"{(data / 'index.sqlite').stat().st_size / 2**20:.0f} MiB")
            for case in CASES:
                by_language, by_hand, ours, theirs = measure(db, case, args.repeat)
                ms, base_ms = by_language.median * 1e3, by_hand.median * 1e3
                met = ms < TARGET_MS
                same = ours == theirs
                report(f"query.{case.name}",
                       f"{ms:.1f} ms median for `{case.text}` ({len(ours)} studies; {by_language.spread()}; "
                       f"target < {TARGET_MS:.0f} ms: {'met' if met else 'MISSED'}"
                       f"{'' if same else f'; IDS DIFFER: hand-written SQL found {len(theirs)}'})",
                       ratio=ms / base_ms, baseline=f"hand-written SQL {base_ms:.1f} ms")
                failed |= not same
                if args.plans or not met or not same:
                    sql, bindings = generated_sql(db, case.text)
                    info(f"{case.name}: {sql}\n      bindings {bindings}\n{explain(db, sql, bindings)}\n"
                         f"    hand-written: {case.baseline}\n{explain(db, case.baseline)}")
            expected = len(query_language.run(db, END_TO_END))
        finally:
            archive.close()
        failed |= not end_to_end(data, expected, args.repeat, args.wait_find, args.profile)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
