#!/usr/bin/env bash
# Boot an edge image under qemu (software emulation, no KVM needed) and keep the serial log.
#
#   image/boot-qemu.sh ARCH IMAGE LOG [TIMEOUT_S]
#
# The image's own kernel and initrd are read from its FAT boot partition (mcopy) and started by
# qemu directly; the kernel command line is the image's cmdline.txt with the serial console of the
# machine and `edge.selftest`, so edge-selftest.service prints the unit's state, `edge status`,
# memory and boot-to-ready time, stops edge and powers off (qemu then exits 0).
#   amd64: qemu-system-x86_64 -M q35, virtio disk
#   arm64: qemu-system-aarch64 -M raspi3b with bcm2837-rpi-3-b.dtb (the SD image is padded to a
#          power of two, as the emulated SD controller needs)
# IMAGE is booted in place (its first boot grows the root partition): pass a copy to keep one.
set -euo pipefail
ARCH=${1:?arch} IMG=${2:?image} LOG=${3:?log} TIMEOUT=${4:-900}
BOOT_OFFSET=${EDGE_IMAGE_BOOT_OFFSET:-4M}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mcopy -n -i "$IMG@@$BOOT_OFFSET" ::/vmlinuz ::/initrd.img ::/cmdline.txt "$TMP/"
BASE=$(sed -E 's/console=[^ ]+//g; s/ +/ /g' "$TMP/cmdline.txt" | tr -d '\n')
EXTRA=${EDGE_SELFTEST:-edge.selftest}
case "$ARCH" in
  amd64)
    CMD=(qemu-system-x86_64 -M q35 -cpu max -m "${EDGE_QEMU_MEM:-1024}" -smp 2 -nographic -no-reboot
         -kernel "$TMP/vmlinuz" -initrd "$TMP/initrd.img"
         -append "console=ttyS0,115200 $BASE $EXTRA systemd.show_status=1"
         -drive "file=$IMG,format=raw,if=virtio" -netdev user,id=n0 -device virtio-net-pci,netdev=n0) ;;
  arm64)
    size=$(stat -c %s "$IMG"); pow=1; while [ $pow -lt "$size" ]; do pow=$((pow * 2)); done
    [ "$pow" = "$size" ] || truncate -s "$pow" "$IMG"
    mcopy -n -i "$IMG@@$BOOT_OFFSET" ::/bcm2837-rpi-3-b.dtb "$TMP/"
    CMD=(qemu-system-aarch64 -M raspi3b -m 1024 -nographic -no-reboot
         -kernel "$TMP/vmlinuz" -initrd "$TMP/initrd.img" -dtb "$TMP/bcm2837-rpi-3-b.dtb"
         -append "console=ttyAMA0,115200 $BASE $EXTRA systemd.show_status=1 dwc_otg.fiq_fsm_enable=0"
         -drive "file=$IMG,format=raw,if=sd") ;;
  *) echo "boot-qemu.sh: unknown arch '$ARCH'" >&2; exit 2 ;;
esac
t0=$(date +%s)
rc=0
timeout --foreground "$TIMEOUT" "${CMD[@]}" </dev/null >"$LOG" 2>&1 || rc=$?
echo "boot-qemu.sh: qemu exited $rc after $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
grep -a '^edge-selftest:' "$LOG" | sed 's/\r$//' || true
exit $rc
