#!/usr/bin/env bash
# The README's first command: install, build, then run a whole federation on this machine
# (moeh run with its defaults; extra arguments are passed to it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/build.sh"
exec "$root/build/bin/moeh" run "$@"
