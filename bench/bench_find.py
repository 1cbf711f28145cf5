"""C-FIND latency over a large index: STUDY level, Patient Name wildcard.

The index is filled directly with SQL (the issue allows it: importing a million files
would measure import, not query). Each query is a DCMTK ``findscu`` round trip, one
association per query as a workstation makes it; the baseline is the same matching done
as a bare SQLite query in this process, and ``echoscu`` as the cost of an association.

    python -m bench.bench_find [--instances 1000000]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, wait_port
from dicomfs.archive import open_archive
from dicomfs.index.cfind import fold_name


def fill(data_dir: Path, instances: int) -> tuple[int, int]:
    """patients x 2 studies x 4 series x 25 instances, inserted in bulk; returns counts."""
    per_patient = 2 * 4 * 25
    patients = max(1, instances // per_patient)
    archive = open_archive(data_dir)
    db = archive.db
    now = time.time()
    surnames = ["DOE", "ROE", "SMITH", "MÜLLER", "YAMADA", "GARCIA", "NGUYEN", "KOWALSKI"]
    with db.transaction():
        for p in range(patients):
            db.execute(
                "INSERT INTO patients (patient_key, patient_id, issuer_of_patient_id, patient_name, patient_birth_date,"
                " patient_birth_time, patient_sex, other_patient_ids, ethnic_group, patient_comments, created_at,"
                " updated_at, patient_name_folded) VALUES (?, ?, '', ?, '19700101', '', 'O', '', '', '', ?, ?, ?)",
                (f"\x1fP{p}", f"P{p}", f"{surnames[p % len(surnames)]}^PATIENT{p}", now, now,
                 fold_name(f"{surnames[p % len(surnames)]}^PATIENT{p}")),
            )
            pid = db.last_rowid()
            for s in range(2):
                db.execute(
                    "INSERT INTO studies (patient_id, study_uid, study_date, study_time, accession_number, study_id,"
                    " study_description, referring_physician_name, physicians_reading, admitting_diagnoses,"
                    " patient_age, patient_size, patient_weight, institution_name, created_at, updated_at)"
                    " VALUES (?, ?, ?, '120000', ?, '1', 'CT Thorax', '', '', '', '', '', '', '', ?, ?)",
                    (pid, f"2.25.{p}.{s}", f"2024{(p % 12) + 1:02d}{(s % 28) + 1:02d}", f"A{p}-{s}", now, now),
                )
                st = db.last_rowid()
                for se in range(4):
                    db.execute(
                        "INSERT INTO series (study_id, series_uid, modality, series_number, series_description,"
                        " series_date, series_time, body_part_examined, protocol_name, laterality, station_name,"
                        " manufacturer, frame_of_reference_uid, pps_start_date, pps_start_time, created_at,"
                        " updated_at) VALUES (?, ?, ?, ?, '', '', '', '', '', '', '', '', '', '', '', ?, ?)",
                        (st, f"2.25.{p}.{s}.{se}", "PT" if se == 3 else "CT", se + 1, now, now),
                    )
                    series_id = db.last_rowid()
                    db.conn.executemany(
                        "INSERT INTO instances (series_id, sop_uid, sop_class_uid, instance_number,"
                        " transfer_syntax_uid, specific_character_set, content_date, content_time,"
                        " acquisition_number, image_type, rows, columns, number_of_frames, photometric, has_image,"
                        " file_path, file_size, json_size, json_version, added_part10_header, source, received_at)"
                        " VALUES (?, ?, '1.2.840.10008.5.1.4.1.1.2', ?, '1.2.840.10008.1.2.1', '', '', '', '', '',"
                        " 512, 512, 1, 'MONOCHROME2', 1, 'x', 0, 0, 1, 0, 'bench', ?)",
                        [(series_id, f"2.25.{p}.{s}.{se}.{i}", i + 1, now) for i in range(25)],
                    )
    count = db.get_val("SELECT count(*) FROM instances")
    studies = db.get_val("SELECT count(*) FROM studies")
    archive.close()
    return count, studies


def timed(cmd: list[str], repeat: int) -> list[float]:
    env = {**os.environ, "TCP_NODELAY": "1"}
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="dicomfs-find-") as scratch:
        data = Path(scratch) / "data"
        start = time.perf_counter()
        count, studies = fill(data, args.instances)
        print(f"  filled an index of {count} instances, {studies} studies in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
        port = free_port()
        daemon = subprocess.Popen([sys.executable, "-m", "dicomfs", "serve", "--data-dir", str(data), "--create",
                                   "--no-mount", "--bind", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"])
        try:
            wait_port(port)
            keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=DOE^PATIENT16*", "-k", "StudyInstanceUID",
                    "-k", "StudyDate", "-k", "ModalitiesInStudy", "-k", "NumberOfStudyRelatedInstances"]
            find = ["/usr/bin/findscu", "-S", "-aec", "DICOMFS", *keys, "127.0.0.1", str(port)]
            echo = ["/usr/bin/echoscu", "-aec", "DICOMFS", "127.0.0.1", str(port)]
            timed(find, 2)  # warm the page cache
            find_ms = statistics.median(timed(find, args.repeat)) * 1e3
            echo_ms = statistics.median(timed(echo, args.repeat)) * 1e3
            archive = open_archive(data)

            from dicomfs.index import cfind

            q = cfind.build(cfind.Level.STUDY, {"PatientName": "DOE^PATIENT16*", "StudyInstanceUID": "",
                                                "StudyDate": "", "ModalitiesInStudy": "",
                                                "NumberOfStudyRelatedInstances": ""},
                            patient_root=False, fold_names=True)
            sql_times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                answers = list(cfind.run(archive.db, q))
                sql_times.append(time.perf_counter() - t)
            archive.close()
            sql_ms = statistics.median(sql_times) * 1e3
            print(f"BENCH find.study_wildcard: {find_ms:.1f} ms median per findscu query over {count} instances "
                  f"({len(answers)} answers; target < 50 ms) (ratio {find_ms / echo_ms:.2f} vs echoscu "
                  f"{echo_ms:.1f} ms, the cost of an association alone)")
            print(f"BENCH find.sql_only: {sql_ms:.1f} ms median for the same matching as a bare SQLite query "
                  f"(the index's share of the latency)")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
