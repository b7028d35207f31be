#!/usr/bin/env bash
# Installs missing Debian packages, configures and builds moeh into BUILD_DIR (default build/).
# Extra arguments go to cmake's configure step (e.g. -DMOEH_SANITIZE=ON).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
"$root/scripts/install-deps.sh"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" "$@" >/dev/null
cmake --build "$build" -j"$(nproc)"
