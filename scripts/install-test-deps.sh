#!/usr/bin/env bash
# Installs the tools the multi-host test needs (test/multihost, docs/multi-host.md):
# ip and tc (iproute2) for the network namespaces, links and shaping; nft
# (nftables) for random packet loss where the kernel has no netem; ping
# (iputils-ping) to measure what the shaped link really does; openssl for the
# certificates deploy/drplane-certs makes; script (bsdutils, util-linux's) for the
# pseudo-terminal drctl's progress bars are tested under (test/integration/drctl-progress).
# And the NBD clients the agent's NBD tests use (test/integration/agent-nbd*.test.ts,
# docs/nbd.md): qemu-io and qemu-img (qemu-utils), nbdinfo, nbdcopy and nbdfuse
# (libnbd-bin), fusermount3 (fuse3) to unmount nbdfuse, fio, and sqlite3 for the
# database on the export; prlimit (util-linux) to start a master target under an
# address-space limit (test/integration/master-target-address-space). Idempotent: does nothing when
# everything is already there. The test runs it in its set-up, so `npm test` as
# root on a fresh Debian or Ubuntu machine needs nothing else.
# Usage: scripts/install-test-deps.sh   (as root, on a Debian or Ubuntu machine)
set -euo pipefail
exec "$(dirname "$0")/ensure-commands.sh" install-test-deps ip=iproute2 tc=iproute2 nft=nftables ping=iputils-ping openssl=openssl script=bsdutils \
  qemu-io=qemu-utils qemu-img=qemu-utils nbdinfo=libnbd-bin nbdcopy=libnbd-bin nbdfuse=libnbd-bin \
  fusermount3=fuse3 fio=fio sqlite3=sqlite3 prlimit=util-linux
