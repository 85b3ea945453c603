#!/usr/bin/env bash
# System packages tchat needs (Debian/Ubuntu, as root or with sudo).
#   setup-system.sh run    what `tchat serve` on embedded defaults uses (FFmpeg)
#   setup-system.sh        everything the tests and services use
# Installs what Debian provides; for what it does not (Go >= 1.26, a Java 17 where the
# release has none) it stops at once with one line naming what to install. apt calls
# wait for another apt/dpkg to finish (scripts/apt-get.sh) instead of failing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mode=${1:-all}
die() { echo "[setup] $*" >&2; exit 1; }
# No `grep -q` after a pipe here: it exits at the first match, the writer gets SIGPIPE
# (apt-cache policy writes line by line) and pipefail turns a match into a failure.

if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  die "Python >= 3.11 is needed as python3 (found: $(python3 --version 2>&1 || echo none)); install python3.11 (Debian 12's python3)"
fi

if [ "$mode" = run ]; then
  pkgs=(ffmpeg python3-venv)
else
  pkgs=(redis-server ffmpeg chromium maven python3-venv iproute2
         # the reverse-proxy test of the admin listener (tests/integration/test_security.py)
         nginx
        # T069 and the shaped-uplink browser tests: namespaces, tc, nftables (ICE over TCP)
        nftables
        # scripts/repeat-tests.sh --busy keeps a core busy
        stress-ng
        # GStreamer webrtcbin, the interop test's non-Python WebRTC client (system python3-gi)
        python3-gi gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 gstreamer1.0-plugins-good
        gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-nice gstreamer1.0-libav)
fi

# Go >= 1.26 builds SeaweedFS (the S3 test server) once; Debian has no such Go, so say so
# before anything slow. A weed already built (~/.cache/tchat/bin) needs no Go.
java17=""
if [ "$mode" != run ]; then
  weed_version=$(sed -n 's/^VERSION = "\(.*\)"$/\1/p' "$here/../src/tchat/devservices/seaweedfs.py")
  weed="${TCHAT_CACHE_DIR:-$HOME/.cache/tchat}/bin/weed-$weed_version"
  if [ ! -x "$weed" ] && ! go version 2>/dev/null | grep -E 'go1\.(2[6-9]|[3-9][0-9])' >/dev/null; then
    die "Go >= 1.26 is needed once to build SeaweedFS and Debian does not provide it: install it from https://go.dev/dl/ and put its bin/ on PATH (found: $(go version 2>/dev/null || echo no go))"
  fi
  # Cassandra 5.0 runs on Java 17 (src/tchat/devservices/cassandra.py finds it: JAVA_HOME,
  # the java on PATH, or Debian's /usr/lib/jvm/java-17-openjdk-*)
  for j in "${JAVA_HOME:-/nonexistent}/bin/java" "$(command -v java || true)" /usr/lib/jvm/java-17-openjdk-*/bin/java; do
    if [ -x "$j" ] && "$j" -version 2>&1 | grep -E 'version "17[."]' >/dev/null; then java17=$j; break; fi
  done
  [ -n "$java17" ] || pkgs+=(openjdk-17-jre-headless)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null || missing+=("$p")
done
# npm fetches the pages' hls.js (scripts/web-deps.sh). A NodeSource nodejs bundles npm
# and conflicts with Debian's npm package, so only a machine without npm gets Debian's.
command -v npm >/dev/null || missing+=(nodejs npm)

if ((${#missing[@]})); then
  echo "[setup] installing ${missing[*]}"
  bash "$here/apt-get.sh" update -q
  unknown=()
  for p in "${missing[@]}"; do
    apt-cache policy "$p" 2>/dev/null | grep 'Candidate: [^(]' >/dev/null || unknown+=("$p")
  done
  if [[ " ${unknown[*]} " == *" openjdk-17-jre-headless "* ]]; then
    die "Java 17 is needed for Cassandra 5.0 and this release's apt has no openjdk-17: install a JDK 17 (e.g. Eclipse Temurin 17) and set JAVA_HOME to it"
  fi
  ((${#unknown[@]} == 0)) || die "apt has no package ${unknown[*]}: install the equivalent by hand (tchat expects Debian 12)"
  bash "$here/apt-get.sh" install -y -q "${missing[@]}"
fi
