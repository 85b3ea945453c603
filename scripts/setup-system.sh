#!/usr/bin/env bash
# System packages tchat needs (Debian/Ubuntu, as root or with sudo).
#   setup-system.sh run    what `tchat serve` on embedded defaults uses (FFmpeg)
#   setup-system.sh        everything the tests and services use
set -euo pipefail
if [ "${1:-all}" = run ]; then
  pkgs=(ffmpeg python3-venv)
else
  pkgs=(redis-server ffmpeg chromium maven openjdk-17-jre-headless python3-venv iproute2 nginx)
  # GStreamer's webrtcbin: the outside WHIP publisher of the interop tests, driven from
  # the system python3 (tests/integration/gst_whip.py)
  pkgs+=(python3-gi gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 gstreamer1.0-nice
         gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
         gstreamer1.0-plugins-ugly gstreamer1.0-libav)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm fetches the pages' hls.js (scripts/web-deps.sh). A NodeSource nodejs bundles npm
# and conflicts with Debian's npm package, so only a machine without npm gets Debian's.
command -v npm >/dev/null || missing+=(nodejs npm)
# SeaweedFS needs Go >= 1.26 (its go.mod); Debian's golang-go is older, so we only check.
if [ "${1:-all}" != run ] && ! go version 2>/dev/null | grep -qE 'go1\.(2[6-9]|[3-9][0-9])'; then
  echo "[setup] warning: Go >= 1.26 not found; building SeaweedFS (the S3 test server) will fail" >&2
fi
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "[setup] installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q "${missing[@]}"
fi
