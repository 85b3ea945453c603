#!/usr/bin/env bash
# The load suite's single-instance run with the viewers' receive work kept off the SFU's
# core, as it is when the viewers are other hosts.
#
# On plain loopback the kernel delivers each datagram to its reader inside the sender's
# sendmmsg (softirq, charged to the sender): the SFU's CPU then includes its viewers'
# receive path (a fifth of its profile at 800 viewers, docs/sfu.md). Here the run happens
# in a network namespace of its own whose loopback steers received packets (RPS) to the
# CPUs other than CPU 0; the SFU is pinned to CPU 0, the generator to the others. Same
# machine, same suite, same report (metrics.viewers_receive_work says which way it ran).
#
#   scripts/load-steered.sh [VIEWERS] [SECONDS]      (root, >= 2 CPUs; defaults 800, 30)
set -euo pipefail
VIEWERS=${1:-800}
SECONDS_=${2:-30}
PY=${PY:-.venv/bin/python}
NS=tchat-steered-$$
CPUS=$(nproc)
[ "$CPUS" -ge 2 ] || { echo "load-steered: needs 2 CPUs or more, this machine has $CPUS" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "load-steered: needs root (ip netns, sysfs)" >&2; exit 2; }
OTHERS=$(printf '%x' $(( (1 << CPUS) - 2 )))  # every CPU but CPU 0
LAST=$((CPUS - 1))

ip netns add "$NS"
trap 'ip netns del "$NS" 2>/dev/null || true' EXIT
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" sh -c "echo $OTHERS > /sys/class/net/lo/queues/rx-0/rps_cpus"

# Pin each process as it appears, for as long as the run lasts (the suite starts the SFU
# first and its generator processes after the benches).
ip netns exec "$NS" bash -c "
  while :; do
    for p in \$(pgrep --ns \$\$ --nslist net -f '[t]chat serve'); do taskset -a -cp 0 \$p >/dev/null 2>&1 || true; done
    for p in \$(pgrep --ns \$\$ --nslist net -f '[s]fu_load viewers'); do taskset -a -cp 1-$LAST \$p >/dev/null 2>&1 || true; done
    sleep 0.5
  done" &
PINNER=$!
trap 'kill $PINNER 2>/dev/null || true; ip netns del "$NS" 2>/dev/null || true' EXIT

rc=0
ip netns exec "$NS" env PERF_PROFILE="${PERF_PROFILE:-ci}" PERF_ENFORCE="${PERF_ENFORCE:-gates}" \
  NUM_SFU_INSTANCES=1 VIEWERS_PER_INSTANCE="$VIEWERS" TEST_DURATION_SECONDS="$SECONDS_" \
  LOAD_STEERED="rps to CPUs 0x$OTHERS, SFU on CPU 0" \
  "$PY" -m pytest tests/performance/test_load.py -q -p no:cacheprovider -k 50K || rc=$?
exit $rc
