#!/usr/bin/env bash
# Build and install the native SFU fan-out (native/, Rust + PyO3, by maturin) into the
# venv. Optional: without cargo tchat runs the Python path and says so at start-up
# (SFU_FASTPATH=auto), as it does if the build fails (said loudly; the tests that need
# the extension then fail). Rebuilt only when native/ changed since the last build.
#   scripts/build-native.sh          build if needed
#   scripts/build-native.sh --force  build anyway
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
stamp=$VENV/.native-built
export PATH=$PATH:$HOME/.cargo/bin
if ! command -v cargo >/dev/null; then
  echo "native: cargo not found: the SFU runs its Python fan-out (slower; docs/sfu.md)" >&2
  exit 0
fi
newest=$(find native -path native/target -prune -o -type f -newer "$stamp" -print -quit 2>/dev/null)
if [ "${1:-}" != "--force" ] && [ -f "$stamp" ] && [ -z "$newest" ] \
   && "$VENV/bin/python" -c 'import tchat_fastpath' 2>/dev/null; then
  exit 0
fi
echo "native: building the SFU fan-out (cargo $(cargo --version | cut -d' ' -f2), release)"
if ! VIRTUAL_ENV=$PWD/$VENV "$VENV/bin/maturin" develop --release -q \
      -m native/Cargo.toml >"$VENV/.native-build.log" 2>&1; then
  tail -n 30 "$VENV/.native-build.log" >&2
  # tchat still runs (the Python fan-out); the tests that need it fail where cargo is
  echo "native: build FAILED (log: $VENV/.native-build.log); tchat runs its Python fan-out" >&2
  exit 0
fi
touch "$stamp"
"$VENV/bin/python" -c 'import tchat_fastpath as f; print(f"native: tchat_fastpath {f.__version__} installed")'
