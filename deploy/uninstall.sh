#!/usr/bin/env bash
# Removes drplane's units and program from this host, or from a scratch root,
# and keeps its data, configuration and users. Installed as
# /usr/sbin/drplane-uninstall.
#
#   uninstall.sh [--root DIR] [--daemons LIST] [--purge-config]
#
#   --root DIR       uninstall from DIR instead of /
#   --daemons LIST   comma-separated, from configuration-server,process-server,master-target,agent
#                    (default: every installed one); the program goes with the last daemon
#   --purge-config   also delete /etc/drplane/<daemon>.json of those daemons, and with the
#                    last daemon all of /etc/drplane (certificates, keys, passphrase)
#
# Kept, always: /var/lib/drplane (replicas, recovery points, the configuration
# server's database: delete it yourself once you are sure), the system users
# (files they own stay theirs, and a reused id would hand them to someone
# else), your own drop-ins under /etc/systemd/system/drplane-*.service.d/, and
# without --purge-config /etc/drplane.
set -euo pipefail

me=uninstall.sh
die() { echo "$me: $*" >&2; exit 1; }
note() { echo "$me: $*"; }
# The comment block at the top of this file, as help.
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }

all_daemons=(configuration-server process-server master-target agent)
root=/
daemons=""
purge_config=no
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    --root=*) root=${1#--root=}; shift ;;
    --daemons) daemons=${2:?--daemons needs a list}; shift 2 ;;
    --daemons=*) daemons=${1#--daemons=}; shift ;;
    --purge-config) purge_config=yes; shift ;;
    -h | --help) usage 0 ;;
    *) die "unknown option '$1' (see $me --help)" ;;
  esac
done
[ -d "$root" ] || die "--root $root is not a directory"
root=$(cd "$root" && pwd)
prefix=${root%/}
[ "$(id -u)" -eq 0 ] || die "run as root"
command -v systemctl >/dev/null 2>&1 || die "systemctl is not installed"
live=no
if [ "$root" = / ] && [ -d /run/systemd/system ]; then live=yes; fi
units_dir="$prefix/usr/lib/systemd/system"

if [ -z "$daemons" ]; then
  selected=("${all_daemons[@]}")
else
  IFS=, read -r -a selected <<<"$daemons"
  for name in "${selected[@]}"; do
    case " ${all_daemons[*]} " in *" $name "*) ;; *) die "unknown daemon '$name' in --daemons (one of: ${all_daemons[*]})" ;; esac
  done
fi

# Disables (and on a live host stops: the daemons finish in-flight work within TimeoutStopSec) the units that exist.
disable() {
  local present=()
  for unit in "$@"; do
    if [ -f "$units_dir/$unit" ]; then present+=("$unit"); fi
  done
  [ ${#present[@]} -gt 0 ] || return 0
  if [ "$live" = yes ]; then systemctl disable --now "${present[@]}"; else systemctl --root="$root" disable "${present[@]}"; fi
}

removed=()
units=()
for name in "${selected[@]}"; do units+=("drplane-$name.service"); done
disable "${units[@]}"
for name in "${selected[@]}"; do
  if [ -f "$units_dir/drplane-$name.service" ]; then removed+=("$name"); fi
  rm -f "$units_dir/drplane-$name.service" \
    "$prefix/usr/lib/sysusers.d/drplane-$name.conf" \
    "$prefix/usr/lib/tmpfiles.d/drplane-$name.conf" \
    "$prefix/etc/systemd/system/drplane-$name.service.d/50-paths.conf"
  dropins="$prefix/etc/systemd/system/drplane-$name.service.d"
  if [ -d "$dropins" ]; then
    rmdir "$dropins" 2>/dev/null || note "kept your drop-ins in /etc/systemd/system/drplane-$name.service.d"
  fi
  if [ "$purge_config" = yes ]; then rm -f "$prefix/etc/drplane/$name.json"; fi
done

remaining=()
for name in "${all_daemons[@]}"; do
  if [ -f "$units_dir/drplane-$name.service" ]; then remaining+=("$name"); fi
done
if [ ${#remaining[@]} -eq 0 ]; then
  disable drplane.target
  rm -f "$units_dir/drplane.target" \
    "$prefix/usr/lib/sysusers.d/drplane.conf" \
    "$prefix/usr/lib/tmpfiles.d/drplane.conf" \
    "$prefix/usr/bin/drctl" \
    "$prefix/usr/sbin/drplane-certs" \
    "$prefix/usr/sbin/drplane-reconfigure" \
    "$prefix/usr/sbin/drplane-uninstall"
  rm -rf "$prefix/usr/lib/drplane" "$prefix/usr/share/doc/drplane"
  rm -rf "$prefix"/usr/lib/.drplane.new.* "$prefix"/usr/lib/.drplane.old.*
  if [ "$purge_config" = yes ]; then rm -rf "$prefix/etc/drplane"; fi
  note "removed the program, commands and units"
else
  note "kept the program: still installed: ${remaining[*]}"
fi
if [ "$live" = yes ]; then systemctl daemon-reload; fi

note "removed: ${removed[*]:-nothing (no unit was installed)}"
[ "$purge_config" = yes ] || note "kept /etc/drplane (configuration, certificates, passphrase): --purge-config deletes it"
note "kept /var/lib/drplane (data) and the users drplane-cs, drplane-ps, drplane-mt: see deploy/README.md before deleting them"
