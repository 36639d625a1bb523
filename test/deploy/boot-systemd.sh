#!/usr/bin/env bash
# Used by test/deploy/systemd-boot.test.ts. Runs as PID 1 of new mount, pid,
# network, uts, ipc and cgroup namespaces (unshare): lays an overlay over this
# host's / (writes go to a tmpfs and vanish with the namespaces), adds what an
# operator brings before installing (certificates made with drplane-certs, an
# agent configuration naming a source disk), and boots systemd there as PID 1.
# The test then runs deploy/install.sh inside, as on a VM.
#   boot-systemd.sh WORK REPO
set -euo pipefail
work=$1 repo=$2
merged=$work/merged
mkdir -p "$work/layers" "$merged"
mount -t tmpfs tmpfs "$work/layers"
mkdir -p "$work/layers/upper" "$work/layers/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/layers/upper,workdir=$work/layers/work" "$merged"
mount -t proc proc "$merged/proc"
mount -t sysfs -o ro sysfs "$merged/sys"
mount -t cgroup2 cgroup2 "$merged/sys/fs/cgroup"
# A /dev of its own, as a container has: the host's disks stay out of reach.
mount -t tmpfs -o mode=755 tmpfs "$merged/dev"
for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  IFS=: read -r name major minor <<<"$node"
  mknod -m 666 "$merged/dev/$name" c "$major" "$minor"
done
mkdir "$merged/dev/pts" "$merged/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$merged/dev/pts"
ln -s pts/ptmx "$merged/dev/ptmx"
for dir in dev/shm run tmp; do mount -t tmpfs tmpfs "$merged/$dir"; done
# Nothing of the host's own systemd configuration.
rm -rf "$merged/etc/systemd/system"/*
# The checkout, read-only, where the test finds it (even were it under /tmp).
mkdir -p "$merged$repo"
mount --bind "$repo" "$merged$repo"
mount -o remount,bind,ro "$merged$repo"

mkdir -p "$merged/etc/drplane/tls"
ca=$merged/root/ca
"$repo/deploy/drplane-certs" init "$ca"
# Each certificate has its daemon's role and is named as the daemon registers (ps1, mt1, and vm1 below: the
# configuration server binds a server's name to its certificate's CN); the files keep the example configuration's names.
for pair in configuration-server:configuration-server process-server:ps1 master-target:mt1 agent:vm1; do
  kind=${pair%%:*} cn=${pair#*:}
  "$repo/deploy/drplane-certs" issue "$ca" "$cn" --role "$kind" --ip 127.0.0.1
  cp "$ca/$cn.crt" "$merged/etc/drplane/tls/$kind.crt"
  cp "$ca/$cn.key" "$merged/etc/drplane/tls/$kind.key"
done
"$repo/deploy/drplane-certs" issue "$ca" operator --role operator
cp "$ca/ca.crt" "$merged/etc/drplane/tls/"
mkdir -p "$merged/srv"
head -c 8388608 /dev/urandom >"$merged/srv/vm1.img"
truncate -s 64M "$merged/srv/vm1.img"
node -e '
const fs = require("node:fs");
const [example, file] = process.argv.slice(1);
fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(example, "utf8")), name: "vm1", disks: ["/srv/vm1.img"] }, null, 2));
' "$repo/deploy/config/agent.json" "$merged/etc/drplane/agent.json"
cat >"$merged/etc/systemd/system/boot-test.target" <<'UNIT'
[Unit]
Description=drplane test boot: the basic system
Requires=basic.target
After=basic.target
AllowIsolate=yes
UNIT
echo booting
export container=drplane-test
exec chroot "$merged" /lib/systemd/systemd --unit=boot-test.target --log-target=console --show-status=no
