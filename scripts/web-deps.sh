#!/usr/bin/env bash
# Front-end packages of the web pages, from npm, pinned and checked, served locally
# (nothing is loaded from a CDN at run time): hls.js → src/tchat/web/static/vendor/.
set -euo pipefail
HLS_VERSION=1.7.4
HLS_INTEGRITY="sha512-3GlxGdPvT2YHvQYOt+yOzT/DEior/qJVNIylHA77kgeoBTdQQqi70GwefNEUmHQeNGyjC8U62+bruqW/Tpm+tg=="
cd "$(dirname "$0")/.."
vendor=src/tchat/web/static/vendor
stamp="$vendor/.hls-$HLS_VERSION"
[ -f "$stamp" ] && [ -f "$vendor/hls.min.js" ] && exit 0
command -v npm >/dev/null || { echo "[web-deps] npm missing: run make setup (apt nodejs npm)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "[web-deps] npm pack hls.js@$HLS_VERSION"
(cd "$tmp" && npm pack --silent "hls.js@$HLS_VERSION" >/dev/null)
tgz="$tmp/hls.js-$HLS_VERSION.tgz"
got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
if [ "$got" != "$HLS_INTEGRITY" ]; then
  echo "[web-deps] hls.js-$HLS_VERSION.tgz integrity mismatch: $got" >&2
  exit 1
fi
tar -xzf "$tgz" -C "$tmp" package/dist/hls.min.js package/LICENSE
mkdir -p "$vendor"
rm -f "$vendor"/.hls-*
cp "$tmp/package/dist/hls.min.js" "$vendor/hls.min.js"
cp "$tmp/package/LICENSE" "$vendor/hls.js.LICENSE"
touch "$stamp"
echo "[web-deps] hls.js $HLS_VERSION → $vendor"
