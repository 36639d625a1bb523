#!/usr/bin/env bash
# Installs the tools the benchmarks' peers need (rsync; cp and sync come with
# coreutils; fio for npm run bench:nbd). Idempotent: does nothing when everything is already there.
# Usage: scripts/install-bench-deps.sh   (as root, on a Debian or Ubuntu machine)
set -euo pipefail
exec "$(dirname "$0")/ensure-commands.sh" install-bench-deps rsync=rsync cp=coreutils sync=coreutils fio=fio
