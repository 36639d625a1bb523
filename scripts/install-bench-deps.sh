#!/usr/bin/env bash
# Installs the tools the benchmark's peers need (rsync; cp and sync come with
# coreutils). Idempotent: does nothing when everything is already there.
# Usage: scripts/install-bench-deps.sh   (as root, on a Debian or Ubuntu machine)
set -euo pipefail

# Each peer command and the Debian package that provides it.
declare -A package_by_command=([rsync]=rsync [cp]=coreutils [sync]=coreutils)

missing_packages=()
for command_name in "${!package_by_command[@]}"; do
  if ! command -v "$command_name" >/dev/null 2>&1; then
    missing_packages+=("${package_by_command[$command_name]}")
  fi
done

if [ "${#missing_packages[@]}" -eq 0 ]; then
  echo "install-bench-deps: everything is installed ($(rsync --version | head -n1))"
  exit 0
fi

# One name per package, in a stable order.
mapfile -t missing_packages < <(printf '%s\n' "${missing_packages[@]}" | sort -u)

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-bench-deps: missing ${missing_packages[*]}, and this machine has no apt-get;" \
       "install them with your package manager and run the benchmark again" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-bench-deps: missing ${missing_packages[*]}; installing needs root:" \
       "run 'sudo $0' (or 'sudo apt-get install ${missing_packages[*]}')" >&2
  exit 1
fi

echo "install-bench-deps: installing ${missing_packages[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing_packages[@]}"

for command_name in "${!package_by_command[@]}"; do
  if ! command -v "$command_name" >/dev/null 2>&1; then
    echo "install-bench-deps: $command_name is still missing after installing; see the apt-get output above" >&2
    exit 1
  fi
done
echo "install-bench-deps: done ($(rsync --version | head -n1))"
