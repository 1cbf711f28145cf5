#!/usr/bin/env bash
# Run every dicomfs benchmark in sequence with modest defaults; print the BENCH lines at the end.
#
#   bash bench/run_all.sh            # modest sizes (~10 minutes on 2 cores)
#   FULL=1 bash bench/run_all.sh     # the sizes the targets are stated for (walk: 100,000)
#   SCRATCH=/mnt/big bash bench/run_all.sh
#
# Needs: dicomfs installed (pip install -e .), fuse3, root for dropping caches and for the
# mount's read-ahead; DCMTK's dcmj2pnm for the JPEG comparison; dcm2niix and SimpleITK
# (pip install SimpleITK) for bench_tools.
set -uo pipefail
cd "$(dirname "$0")/.."

scratch=${SCRATCH:-/var/tmp}
if [[ -n ${FULL:-} ]]; then
    read_n=2000 import_n=2000 walk_n=100000 jpeg_n=100 repeat=5
else
    read_n=2000 import_n=1000 walk_n=10000 jpeg_n=50 repeat=3
fi
log=$(mktemp /tmp/dicomfs-bench-XXXXXX.log)
status=0

run() {
    echo "== $*" >&2
    if ! python -m "bench.$1" --scratch "$scratch" "${@:2}" 2>&1 | tee -a "$log"; then
        echo "!! bench.$1 failed" >&2
        status=1
    fi
}

run bench_read --instances "$read_n" --repeat "$repeat"
run bench_import --instances "$import_n" --repeat 3
run bench_walk --instances "$walk_n" --repeat 3
run bench_jpeg --instances "$jpeg_n"
run bench_tools --repeat "$repeat"

echo
echo "== summary (full output in $log)"
grep '^BENCH ' "$log"
exit $status
