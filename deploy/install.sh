#!/usr/bin/env bash
# Installs a built drplane on this host, or into a scratch root, as systemd
# services. Run it as root from a built checkout (npm ci && npm run build).
#
#   deploy/install.sh [--root DIR] [--daemons LIST] [--from DIR] [--node PATH] [--start]
#   deploy/install.sh --reconfigure [--root DIR] [--daemons LIST]
#
#   --root DIR      install into DIR instead of / (an image tree, or a test's scratch root)
#   --daemons LIST  comma-separated, from configuration-server,process-server,master-target,agent
#                   (default: all four)
#   --from DIR      the compiled tree to install (default: dist/ of this checkout)
#   --node PATH     the Node.js (20.11 or later) binary the units run, as the target sees it
#                   (default /usr/bin/node; it must exist under --root)
#   --start         start the daemons once enabled (only with --root / and systemd running)
#   --reconfigure   only regenerate the units' paths from /etc/drplane/*.json (drplane-reconfigure)
#
# Running it again upgrades the program and units and never overwrites a
# configuration file. deploy/README.md lists every file it writes, with owners
# and modes.
set -euo pipefail

me=install.sh
die() { echo "$me: $*" >&2; exit 1; }
note() { echo "$me: $*"; }
# The comment block at the top of this file, as help.
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }

all_daemons=(configuration-server process-server master-target agent)
deploy=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$deploy")
root=/
daemons=$(IFS=,; echo "${all_daemons[*]}")
from=""
node_path=/usr/bin/node
start=no
reconfigure=no
daemons_given=no
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    --root=*) root=${1#--root=}; shift ;;
    --daemons) daemons=${2:?--daemons needs a list}; daemons_given=yes; shift 2 ;;
    --daemons=*) daemons=${1#--daemons=}; daemons_given=yes; shift ;;
    --from) from=${2:?--from needs a directory}; shift 2 ;;
    --from=*) from=${1#--from=}; shift ;;
    --node) node_path=${2:?--node needs a path}; shift 2 ;;
    --node=*) node_path=${1#--node=}; shift ;;
    --start) start=yes; shift ;;
    --reconfigure) reconfigure=yes; shift ;;
    -h | --help) usage 0 ;;
    *) die "unknown option '$1' (see $me --help)" ;;
  esac
done

IFS=, read -r -a selected <<<"$daemons"
[ ${#selected[@]} -gt 0 ] || die "--daemons is empty (one or more of: ${all_daemons[*]})"
for name in "${selected[@]}"; do
  case " ${all_daemons[*]} " in *" $name "*) ;; *) die "unknown daemon '$name' in --daemons (one of: ${all_daemons[*]})" ;; esac
done
[ "$(id -u)" -eq 0 ] || die "run as root: it creates users and sets owners"
if [ "$reconfigure" = no ]; then
  from=${from:-$repo/dist}
  [ -d "$from" ] || die "no built drplane at $from: run 'npm ci && npm run build' in $repo first (or pass --from DIR)"
  from=$(cd "$from" && pwd)
  for name in "${selected[@]}" drctl; do
    [ -f "$from/daemons/$name/main.js" ] || die "$from/daemons/$name/main.js is missing: run 'npm run build' in $repo first (or pass --from DIR)"
  done
  for file in package.json package-lock.json proto node_modules; do
    [ -e "$repo/$file" ] || die "$repo/$file is missing: install from a built checkout ('npm ci && npm run build')"
  done
fi
mkdir -p "$root"
root=$(cd "$root" && pwd)
prefix=${root%/}   # "" for /, so "$prefix/etc" is the target's /etc
# systemd is the service manager of this very host: reload it, and start units if asked.
live=no
if [ "$root" = / ] && [ -d /run/systemd/system ]; then live=yes; fi
[ "$start" = no ] || [ "$live" = yes ] || die "--start needs --root / on a host where systemd runs (here: root $root, systemd $([ -d /run/systemd/system ] && echo running || echo 'not running'))"

# Node.js on this host reads JSON and makes the passphrase while installing; the units run $node_path on the target.
host_node=$(command -v node || true)
[ -n "$host_node" ] || host_node="$prefix$node_path"
[ -x "$host_node" ] || die "node is not in PATH: it is needed to install (and to build drplane)"

if [ "$reconfigure" = yes ]; then
  # Without --daemons: every installed daemon.
  if [ "$daemons_given" = yes ]; then set -- --daemons "$daemons"; else set --; fi
  DRPLANE_NODE=$host_node exec "$deploy/drplane-reconfigure" --root "$root" "$@"
fi

for tool in systemctl systemd-sysusers systemd-tmpfiles tar; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (systemd 247 or later and tar are needed)"
done

# The target's Node.js: the units name it in ExecStart.
case "$node_path" in /*) ;; *) die "--node must be an absolute path: $node_path" ;; esac
[ -x "$prefix$node_path" ] || die "no Node.js at $prefix$node_path: install Node.js 20.11 or later there, or pass --node PATH"
node_version=$("$prefix$node_path" --version 2>/dev/null) || die "$prefix$node_path --version failed: is it Node.js for this machine?"
[[ "$node_version" =~ ^v([0-9]+)\.([0-9]+) ]] || die "$prefix$node_path --version printed '$node_version', not a Node.js version"
if [ "${BASH_REMATCH[1]}" -lt 20 ] || { [ "${BASH_REMATCH[1]}" -eq 20 ] && [ "${BASH_REMATCH[2]}" -lt 11 ]; }; then
  die "$prefix$node_path is Node.js $node_version: drplane needs 20.11 or later"
fi

umask 022
user_of() {
  case "$1" in
    configuration-server) echo drplane-cs ;;
    process-server) echo drplane-ps ;;
    master-target) echo drplane-mt ;;
    agent) echo root ;;
  esac
}
gid_of() { if [ "$1" = root ]; then echo 0; return; fi; awk -F: -v n="$1" '$1 == n { print $3; found = 1 } END { exit !found }' "$prefix/etc/group" || die "group $1 is missing from $prefix/etc/group after systemd-sysusers"; }

# 1. The program: /usr/lib/drplane/{dist,proto,node_modules,package.json,package-lock.json}.
# Built beside the old one and swapped in, so a failed copy leaves the old one whole.
program="$prefix/usr/lib/drplane"
stage="$prefix/usr/lib/.drplane.new.$$"
old="$prefix/usr/lib/.drplane.old.$$"
rm -rf "$prefix"/usr/lib/.drplane.new.* "$prefix"/usr/lib/.drplane.old.*
trap 'rm -rf "$stage" "$old"' EXIT
mkdir -p "$stage/dist"
copy_tree() { # from-dir to-dir paths...
  local source=$1 destination=$2
  shift 2
  tar -C "$source" --owner=0 --group=0 --exclude='*.tsbuildinfo' -cf - "$@" | tar -C "$destination" --no-same-permissions -xf -
}
copy_tree "$from" "$stage/dist" daemons shared generated
copy_tree "$repo" "$stage" proto package.json package-lock.json
# Production dependencies only (54 of 193 MB): the packages package-lock.json
# does not mark dev, as npm ci installed them here (native modules included,
# so install on the OS and architecture the checkout was built on).
package_list=$("$host_node" - "$repo" <<'EOF'
const fs = require('node:fs');
const path = require('node:path');
const repo = process.argv[2];
const lock = JSON.parse(fs.readFileSync(path.join(repo, 'package-lock.json'), 'utf8'));
const wanted = [];
for (const [key, entry] of Object.entries(lock.packages ?? {})) {
  if (!key.startsWith('node_modules/') || entry.dev || entry.link) continue;
  if (!fs.existsSync(path.join(repo, key))) {
    if (entry.optional) continue; // another platform's prebuilt binary
    process.stderr.write(`${key} is missing from ${repo}: run npm ci there first\n`);
    process.exit(3);
  }
  wanted.push(key);
}
// A package nested inside another one comes with it.
wanted.sort();
const top = wanted.filter((key) => !wanted.some((other) => other !== key && key.startsWith(`${other}/`)));
if (top.length === 0) { process.stderr.write(`package-lock.json in ${repo} lists no production package\n`); process.exit(3); }
process.stdout.write(top.join('\n') + '\n');
EOF
) || die "cannot list the production packages of $repo"
mapfile -t packages <<<"$package_list"
copy_tree "$repo" "$stage" "${packages[@]}"
chmod -R go-w "$stage"
if [ -d "$program" ]; then mv "$program" "$old"; fi
mv "$stage" "$program"
rm -rf "$old"
note "installed the program in $program (${#packages[@]} production packages) from $from"

# 2. Commands and documentation.
install -d -m 0755 "$prefix/usr/bin" "$prefix/usr/sbin" "$prefix/usr/share/doc/drplane/deploy" "$prefix/usr/share/doc/drplane/docs"
cat >"$prefix/usr/bin/drctl.new" <<EOF
#!/bin/sh
# drctl of the drplane installed in /usr/lib/drplane (deploy/install.sh).
exec $node_path /usr/lib/drplane/dist/daemons/drctl/main.js "\$@"
EOF
chmod 0755 "$prefix/usr/bin/drctl.new"
mv "$prefix/usr/bin/drctl.new" "$prefix/usr/bin/drctl"
install -m 0755 "$deploy/drplane-certs" "$prefix/usr/sbin/drplane-certs"
install -m 0755 "$deploy/drplane-reconfigure" "$prefix/usr/sbin/drplane-reconfigure"
install -m 0755 "$deploy/uninstall.sh" "$prefix/usr/sbin/drplane-uninstall"
install -m 0644 "$repo/README.md" "$prefix/usr/share/doc/drplane/README.md"
install -m 0644 "$deploy/README.md" "$prefix/usr/share/doc/drplane/deploy/README.md"
for doc in "$repo"/docs/*.md; do
  if [ -e "$doc" ]; then install -m 0644 "$doc" "$prefix/usr/share/doc/drplane/docs/"; fi
done

# 3. Units (vendor location; operators override with drop-ins under /etc/systemd/system).
units=(drplane.target)
install -d -m 0755 "$prefix/usr/lib/systemd/system"
install -m 0644 "$deploy/systemd/drplane.target" "$prefix/usr/lib/systemd/system/drplane.target"
for name in "${selected[@]}"; do
  sed "s|^ExecStart=/usr/bin/node |ExecStart=$node_path |" "$deploy/systemd/drplane-$name.service" >"$prefix/usr/lib/systemd/system/drplane-$name.service.new"
  chmod 0644 "$prefix/usr/lib/systemd/system/drplane-$name.service.new"
  mv "$prefix/usr/lib/systemd/system/drplane-$name.service.new" "$prefix/usr/lib/systemd/system/drplane-$name.service"
  units+=("drplane-$name.service")
done

# 4. Users and data directories, from sysusers.d and tmpfiles.d (systemd applies them again at boot).
install -d -m 0755 "$prefix/etc" "$prefix/usr/lib/sysusers.d" "$prefix/usr/lib/tmpfiles.d"
sysusers=(drplane.conf)
tmpfiles=(drplane.conf)
install -m 0644 "$deploy/sysusers.d/drplane.conf" "$prefix/usr/lib/sysusers.d/drplane.conf"
install -m 0644 "$deploy/tmpfiles.d/drplane.conf" "$prefix/usr/lib/tmpfiles.d/drplane.conf"
for name in "${selected[@]}"; do
  if [ -f "$deploy/sysusers.d/drplane-$name.conf" ]; then
    install -m 0644 "$deploy/sysusers.d/drplane-$name.conf" "$prefix/usr/lib/sysusers.d/drplane-$name.conf"
    sysusers+=("drplane-$name.conf")
  fi
  install -m 0644 "$deploy/tmpfiles.d/drplane-$name.conf" "$prefix/usr/lib/tmpfiles.d/drplane-$name.conf"
  tmpfiles+=("drplane-$name.conf")
done
# Bare file names: looked up in the target's sysusers.d and tmpfiles.d folders (an /etc override wins).
systemd-sysusers --root="$root" "${sysusers[@]}" || die "systemd-sysusers failed to create the drplane users in $root/etc/passwd"
systemd-tmpfiles --create --root="$root" "${tmpfiles[@]}" || die "systemd-tmpfiles failed to create the data directories under $root/var/lib/drplane"

# 5. Configuration: examples only where there is none; an operator's file is never touched.
install -d -m 0755 -o 0 -g 0 "$prefix/etc/drplane" "$prefix/etc/drplane/tls"
for name in "${selected[@]}"; do
  config="$prefix/etc/drplane/$name.json"
  if [ -e "$config" ]; then
    note "kept /etc/drplane/$name.json"
    continue
  fi
  user=$(user_of "$name")
  if [ "$user" = root ]; then install -m 0600 -o 0 -g 0 "$deploy/config/$name.json" "$config"; else
    gid=$(gid_of "$user")
    install -m 0640 -o 0 -g "$gid" "$deploy/config/$name.json" "$config"
  fi
  note "wrote the example /etc/drplane/$name.json: edit it (deploy/README.md, docs/configuration.md)"
done
passphrase="$prefix/etc/drplane/passphrase"
if [[ " ${selected[*]} " == *" configuration-server "* ]] && [ ! -e "$passphrase" ]; then
  (umask 077 && "$host_node" -e 'process.stdout.write(require("node:crypto").randomBytes(24).toString("base64url") + "\n")' >"$passphrase.new")
  gid=$(gid_of drplane)
  chown "0:$gid" "$passphrase.new"
  chmod 0640 "$passphrase.new"
  mv "$passphrase.new" "$passphrase"
  note "generated the registration passphrase /etc/drplane/passphrase: copy it to every host of this deployment"
fi

# 6. The units' writable paths, from the configuration files.
DRPLANE_NODE=$host_node "$deploy/drplane-reconfigure" --root "$root" --daemons "$daemons" --no-reload

# 7. Enable (and start).
if [ "$live" = yes ]; then
  systemctl daemon-reload
  systemctl enable "${units[@]}"
  if [ "$start" = yes ]; then
    systemctl start "${units[@]}"
    note "started: ${units[*]} (systemctl status drplane-*; journalctl -u drplane-<daemon> -o cat | jq)"
  else
    for unit in "${units[@]:1}"; do
      if systemctl -q is-active "$unit"; then note "$unit is running the previous version: systemctl restart $unit"; fi
    done
  fi
else
  systemctl --root="$root" enable "${units[@]}"
fi
note "done: ${units[*]} enabled in $root; next: certificates and configuration, see /usr/share/doc/drplane/deploy/README.md"
