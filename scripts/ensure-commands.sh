#!/usr/bin/env bash
# Installs, with apt-get, the Debian packages that provide the commands a
# caller needs, where a command is missing. Idempotent: does nothing when every
# command is there. Used by install-bench-deps.sh and install-test-deps.sh.
# Usage: scripts/ensure-commands.sh LABEL COMMAND=PACKAGE...   (as root where something is missing)
set -euo pipefail

label=${1:?usage: ensure-commands.sh LABEL COMMAND=PACKAGE...}
shift
declare -A package_by_command=()
for pair in "$@"; do package_by_command[${pair%%=*}]=${pair#*=}; done

missing_packages=()
for command_name in "${!package_by_command[@]}"; do
  if ! command -v "$command_name" >/dev/null 2>&1; then
    missing_packages+=("${package_by_command[$command_name]}")
  fi
done

if [ "${#missing_packages[@]}" -eq 0 ]; then
  echo "$label: everything is installed (${!package_by_command[*]})"
  exit 0
fi

# One name per package, in a stable order.
mapfile -t missing_packages < <(printf '%s\n' "${missing_packages[@]}" | sort -u)

if ! command -v apt-get >/dev/null 2>&1; then
  echo "$label: missing ${missing_packages[*]}, and this machine has no apt-get;" \
       "install them with your package manager and run again" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "$label: missing ${missing_packages[*]}; installing needs root:" \
       "run it with sudo (or 'sudo apt-get install ${missing_packages[*]}')" >&2
  exit 1
fi

echo "$label: installing ${missing_packages[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing_packages[@]}"

for command_name in "${!package_by_command[@]}"; do
  if ! command -v "$command_name" >/dev/null 2>&1; then
    echo "$label: $command_name is still missing after installing; see the apt-get output above" >&2
    exit 1
  fi
done
echo "$label: done (${missing_packages[*]})"
