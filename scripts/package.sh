#!/usr/bin/env bash
# Builds the Debian package (build/moeh_<version>_<arch>.deb) with CPack from a release build.
# Installs what is missing first, like the other scripts. Prints the path of the .deb.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
"$root/scripts/build.sh" >&2
(cd "$build" && cpack -G DEB >&2)
ls -t "$build"/moeh_*.deb | head -n 1
