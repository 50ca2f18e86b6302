#!/usr/bin/env bash
# Build the image's initramfs once instead of once per package hook.
#
#   initramfs-defer.sh ROOT defer    (mmdebstrap essential hook, before the kernel is installed)
#   initramfs-defer.sh ROOT build    (end of customize.sh: restore update-initramfs, build it once)
#
# While the packages install, the kernel's postinst hook and initramfs-tools' trigger each run
# update-initramfs; under qemu-user each run takes most of the image's build time. The real
# program is diverted away (dpkg-divert, so its package installs it under another name) and a
# no-op stands in; `build` removes the stand-in and the diversion and builds the initramfs of
# every installed kernel once.
set -euo pipefail
ROOT=${1:?root} MODE=${2:?defer|build}
PROG=/usr/sbin/update-initramfs
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
case "$MODE" in
  defer)
    in_root dpkg-divert --quiet --local --rename --divert "$PROG.edge-real" --add "$PROG"
    mkdir -p "$ROOT/usr/sbin"
    printf '#!/bin/sh\necho "update-initramfs: deferred to the end of the image build ($*)" >&2\nexit 0\n' > "$ROOT$PROG"
    chmod 0755 "$ROOT$PROG" ;;
  build)
    rm -f "$ROOT$PROG"
    in_root dpkg-divert --quiet --local --rename --remove "$PROG"
    [ -x "$ROOT$PROG" ] || { echo "initramfs-defer.sh: no $PROG in the root after the diversion" >&2; exit 1; }
    t0=$(date +%s)
    for k in "$ROOT"/boot/vmlinuz-*; do
      in_root update-initramfs -c -k "${k##*/vmlinuz-}"
    done
    echo "== customize: initramfs built once in $(( $(date +%s) - t0 )) s: $(du -h "$ROOT"/boot/initrd.img-* | cut -f1 | tr '\n' ' ')" ;;
  *) echo "initramfs-defer.sh: unknown mode '$MODE' (defer or build)" >&2; exit 2 ;;
esac
