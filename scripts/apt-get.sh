#!/usr/bin/env bash
# apt-get that waits for another apt or dpkg (unattended-upgrades, a second `make`)
# instead of failing: `scripts/apt-get.sh update`, `scripts/apt-get.sh install -y -q make`.
# DPkg::Lock::Timeout makes apt wait for the dpkg lock; apt 2.6 does not wait for the
# lists lock (`apt-get update`) or the archives lock, so a lock error is retried here
# until APT_LOCK_WAIT seconds (default 600) have passed. Runs as root or with sudo.
set -uo pipefail
wait_s=${APT_LOCK_WAIT:-600}
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
deadline=$((SECONDS + wait_s))
err=$(mktemp)
trap 'rm -f "$err"' EXIT
while :; do
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout="$wait_s" "$@" 2>"$err"
  rc=$?
  cat "$err" >&2
  if [ $rc -eq 0 ] || ! grep -qE 'Could not get lock|Unable to lock|is another process using it' "$err"; then
    exit $rc
  fi
  if [ $SECONDS -ge $deadline ]; then
    echo "[apt] another apt/dpkg still holds its lock after ${wait_s}s; giving up" >&2
    exit $rc
  fi
  echo "[apt] another apt/dpkg holds its lock; waiting (up to ${wait_s}s) …" >&2
  sleep 5
done
