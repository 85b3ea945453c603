#!/usr/bin/env bash
# System packages tchat's tests and services need (Debian/Ubuntu, as root or with sudo).
set -euo pipefail
pkgs=(redis-server ffmpeg chromium maven openjdk-17-jre-headless python3-venv iproute2)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v go >/dev/null || missing+=(golang-go)
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "[setup] installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q "${missing[@]}"
fi
