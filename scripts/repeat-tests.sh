#!/usr/bin/env bash
# Run the browser and real-time (SFU, WebRTC, recording) integration tests N times in a
# row, optionally while `stress-ng --cpu 1` keeps one core busy, and count failures.
#
#   scripts/repeat-tests.sh                 20 runs of the default set
#   scripts/repeat-tests.sh -n 10 --busy    10 runs with one core kept busy
#   scripts/repeat-tests.sh -n 5 tests/integration/test_sfu_browser.py   other targets
#
# Options: -n RUNS (default 20), --busy (stress-ng --cpu 1; a Python spin loop where
# stress-ng is missing), --out DIR (default reports/repeat/<UTC time>[-busy]),
# --run-timeout S (one run's limit, default 1800: a hung run counts as failed), -x/--stop
# (stop at the first failing run), --list (print the targets and exit: make test runs
# them again on the Python fan-out). Targets default to every tests/integration module of
# the browser (all that drive Chromium), SFU, WHIP and interop tests that exists. Needs
# `make venv web-deps` (and nothing of `tchat services up`: these tests start their own
# servers).
# Prints, and writes to DIR/summary.txt: runs, failing runs, failures by test with the
# first line of each distinct message, run durations. Exit status 1 if any run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
runs=20 busy=0 out="" run_timeout=1800 stop=0 list=0 targets=()
while (($#)); do
  case $1 in
    -n) runs=$2; shift 2 ;;
    --busy) busy=1; shift ;;
    --out) out=$2; shift 2 ;;
    --run-timeout) run_timeout=$2; shift 2 ;;
    -x|--stop) stop=1; shift ;;
    --list) list=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if ((${#targets[@]} == 0)); then
  shopt -s nullglob
  for f in tests/integration/test_sfu_*.py tests/integration/test_web*.py \
           tests/integration/test_whip*.py tests/integration/test_*browser*.py \
           tests/integration/test_*broadcast*.py tests/integration/test_*journey*.py \
           tests/integration/test_*interop*.py tests/integration/test_*gst*.py \
           tests/integration/test_cors.py tests/integration/test_recording_layers.py \
           tests/integration/test_shaped_uplink.py tests/integration/test_ice_tcp.py \
           tests/integration/test_publisher_resume.py tests/integration/test_fastpath_diff.py \
           tests/integration/test_swarm_receive.py; do
    [[ " ${targets[*]} " == *" $f "* ]] || targets+=("$f")
  done
fi
if ((list)); then echo "${targets[*]}"; exit 0; fi  # the set (make test's Python pass)
[ -x "$PY" ] || { echo "repeat: $PY missing: run \`make venv web-deps\` first" >&2; exit 1; }
out=${out:-reports/repeat/$(date -u +%Y%m%dT%H%M%SZ)$( ((busy)) && echo -busy)}
mkdir -p "$out"

load_pid=""
stop_load() {
  if [ -n "$load_pid" ]; then
    kill -INT "$load_pid" 2>/dev/null; wait "$load_pid" 2>/dev/null; load_pid=""
  fi
}
trap stop_load EXIT
trap 'stop_load; exit 130' INT TERM
if ((busy)); then
  if command -v stress-ng >/dev/null; then
    stress-ng --cpu 1 --timeout 0 --quiet & load_pid=$!
    load_desc="stress-ng --cpu 1 (pid $load_pid)"
  else
    "$PY" -c 'while True: pass' & load_pid=$!
    load_desc="a Python spin loop (pid $load_pid; stress-ng not installed)"
  fi
  echo "repeat: one core kept busy by $load_desc"
fi

echo "repeat: $runs runs of ${targets[*]} → $out"
for ((i = 1; i <= runs; i++)); do
  start=$(date +%s%N)
  timeout --signal=TERM --kill-after=30 "$run_timeout" \
    "$PY" -m pytest "${targets[@]}" -q -p no:cacheprovider -o addopts="--strict-markers -rfE" \
    --junitxml="$out/run-$i.xml" >"$out/run-$i.log" 2>&1
  rc=$?
  secs=$(( ($(date +%s%N) - start) / 1000000000 ))
  load=$(cut -d' ' -f2 /proc/loadavg)  # 5-minute load average at the run's end
  printf '%s %s %s %s\n' "$i" "$rc" "$secs" "$load" >>"$out/runs.txt"
  echo "repeat: run $i/$runs exit $rc after ${secs}s (load $(cut -d' ' -f1-3 /proc/loadavg)):" \
       "$(tail -n 1 "$out/run-$i.log")"
  grep -E '^(FAILED|ERROR) ' "$out/run-$i.log" | cut -c1-160 | sed 's/^/repeat:   /'
  if ((stop && rc != 0)); then break; fi
done
stop_load

"$PY" - "$out" "$busy" "${load_desc:-}" <<'EOF' | tee "$out/summary.txt"
import os
import statistics
import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

out, busy, load = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
rows = [line.split() for line in (out / "runs.txt").read_text().splitlines()]
runs = [row[:3] for row in rows]
loads = [float(row[3]) for row in rows if len(row) > 3]
failures: dict[str, list[int]] = defaultdict(list)
messages: dict[str, Counter[str]] = defaultdict(Counter)
test_s: dict[str, list[float]] = defaultdict(list)
tests = 0
broken = []
for n, rc, _ in runs:
    xml = out / f"run-{n}.xml"
    if not xml.exists():
        broken.append(f"run {n}: exit {rc}, no JUnit XML (timed out or crashed; see run-{n}.log)")
        continue
    root = ET.parse(xml).getroot()
    cases = list(root.iter("testcase"))
    tests = max(tests, len(cases))
    for case in cases:
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        test_s[name].append(float(case.get("time", 0)))
        for bad in [*case.findall("failure"), *case.findall("error")]:
            failures[name].append(int(n))
            first = (bad.get("message") or bad.text or "").strip().splitlines()
            messages[name][(first[0] if first else "?")[:160]] += 1
    if int(rc) not in (0, 1) and not any(int(n) in v for v in failures.values()):
        broken.append(f"run {n}: exit {rc} with no failing test (see run-{n}.log)")
durations = [float(d) for _, _, d in runs]
failed_runs = sorted({int(n) for n, rc, _ in runs if rc != "0"})
print(f"\n== repeat summary ({out}) ==")
print(f"mode: {'busy: ' + load if busy else 'plain (no added load)'}")
print(f"runs: {len(runs)} · tests per run: {tests} · failing runs: {len(failed_runs)}"
      + (f" {failed_runs}" if failed_runs else ""))
if durations:
    print(f"run duration s: min {min(durations):.0f} · median "
          f"{statistics.median(durations):.0f} · max {max(durations):.0f} · total "
          f"{sum(durations):.0f}")
if loads:
    print(f"5-min load average at the runs' ends: {min(loads):g}-{max(loads):g} "
          f"({os.cpu_count()} CPUs)")
if failures:
    print("failures by test:")
    for name, which in sorted(failures.items(), key=lambda kv: -len(kv[1])):
        print(f"  {len(which)}/{len(runs)}  {name}  (runs {which})")
        for msg, count in messages[name].most_common(3):
            print(f"        {count}× {msg}")
else:
    print("failures by test: none")
for line in broken:
    print(f"  {line}")
slow = sorted(test_s.items(), key=lambda kv: -max(kv[1]))[:8]
print("slowest tests (s, median / max over runs):")
for name, times in slow:
    print(f"  {statistics.median(times):6.1f} / {max(times):6.1f}  {name}")
EOF
awk '$2 != 0 {bad=1} END {exit bad}' "$out/runs.txt"
