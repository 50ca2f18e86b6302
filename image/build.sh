#!/usr/bin/env bash
# Build the edge SD-card image from Debian packages, without loop devices.
#
#   image/build.sh ARCH WHEEL OUTDIR      ARCH: arm64 (Raspberry Pi 3/4/400/CM4/Zero 2 W) or amd64
#
# Steps (docs/install.md, "How the image is built"):
#   1. mmdebstrap: a Debian bookworm root (arm64 under qemu-user-static binfmt), Debian's kernel,
#      raspi-firmware on arm64; image/customize.sh then installs the runtime from WHEEL into
#      /opt/edge/venv (nats-server from its wheel, components prebuilt inside the wheel), the unit
#      rendered from edge/service/service.toml, the first-boot units, and enables them.
#   2. The FAT boot partition (firmware, kernel, initrd, config.txt, cmdline.txt and the user's
#      edge/ folder) is made with mkfs.vfat -C and mcopy; the root with mkfs.ext4 -d.
#   3. sfdisk writes the MBR partition table into the image file; both filesystems are copied
#      into place with dd conv=notrunc.
# Output: OUTDIR/edge-ARCH.img and OUTDIR/build.json (sizes, times).
set -euo pipefail

ARCH=${1:?arch (arm64|amd64)}
WHEEL=$(readlink -f "${2:?wheel}")
OUT=$(mkdir -p "${3:?outdir}" && readlink -f "$3")
HERE=$(cd "$(dirname "$0")" && pwd)
SUITE=${EDGE_IMAGE_SUITE:-bookworm}
MIRROR=${EDGE_IMAGE_MIRROR:-http://deb.debian.org/debian}
BOOT_MB=${EDGE_IMAGE_BOOT_MB:-256}
ROOT_SLACK_MB=${EDGE_IMAGE_ROOT_SLACK_MB:-128}
IMG="$OUT/edge-$ARCH.img"
WORK="$OUT/work-$ARCH"
T0=$(date +%s)

[ "$(id -u)" = 0 ] || { echo "image/build.sh: run as root (mmdebstrap needs it)" >&2; exit 1; }
[ -f "$WHEEL" ] || { echo "image/build.sh: no wheel at $WHEEL (make wheel)" >&2; exit 1; }

EXCLUDE=()
COMMON="systemd,systemd-sysv,systemd-timesyncd,systemd-resolved,udev,dbus,kmod,initramfs-tools,\
python3,python3-venv,ca-certificates,openssh-server,iproute2,wpasupplicant,fdisk,e2fsprogs,\
dosfstools,procps,less,zstd"
case "$ARCH" in
  arm64) PKGS="$COMMON,linux-image-arm64,raspi-firmware,firmware-brcm80211,wireless-regdb"
         KFLAVOUR=arm64
         # Kernel modules for hardware no Pi has: PCIe GPUs of AMD and NVIDIA, InfiniBand.
         for d in gpu/drm/amd gpu/drm/radeon gpu/drm/nouveau infiniband; do
           EXCLUDE+=("--dpkgopt=path-exclude=/lib/modules/*/kernel/drivers/$d/*"
                     "--dpkgopt=path-exclude=/usr/lib/modules/*/kernel/drivers/$d/*")
         done ;;
  amd64) PKGS="$COMMON,linux-image-cloud-amd64"; KFLAVOUR=cloud-amd64 ;;
  *) echo "image/build.sh: unknown arch '$ARCH' (arm64 or amd64)" >&2; exit 2 ;;
esac

if [ "$ARCH" != "$(dpkg --print-architecture)" ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  /lib/systemd/systemd-binfmt /usr/lib/binfmt.d/qemu-aarch64.conf
fi

# shellcheck source=image/mounts.sh
. "$HERE/mounts.sh"
# mmdebstrap mounts /proc, /sys and /dev into the root while its hooks run; a build that was killed
# can leave them behind. rm -rf would then walk into the host's /dev and /sys: refuse instead.
STALE=$(mounts_under "$WORK")
if [ -n "$STALE" ]; then
  echo "image/build.sh: still mounted under $WORK from an earlier build:" >&2
  echo "$STALE" | sed 's/^/   /' >&2
  echo "image/build.sh: unmount them first (umount -R $WORK/root), then build again" >&2
  exit 1
fi
# On every exit path, unmount whatever is still mounted under the work directory (what this build's
# mmdebstrap mounted and did not unmount), deepest first; what cannot be unmounted fails the build.
# binfmt_misc (above) is host setup and stays: unmounting it would drop every registered format.
unmount_work() {
  local rc=$? m left
  for m in $(mounts_under "$WORK"); do umount "$m" 2>/dev/null || true; done
  left=$(mounts_under "$WORK")
  if [ -n "$left" ]; then
    echo "image/build.sh: could not unmount under $WORK:" >&2; echo "$left" | sed 's/^/   /' >&2
    [ "$rc" != 0 ] || rc=1
  fi
  exit "$rc"
}
trap unmount_work EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
rm -rf "$WORK" "$IMG"
mkdir -p "$WORK"
echo "== mmdebstrap $SUITE $ARCH"
# The initramfs must find the root by label and hold the SD/virtio drivers: MODULES=most (the
# default); image/initramfs.conf makes it zstd -3 instead of -9. update-initramfs is diverted to a
# no-op while the packages install (the kernel's hook and initramfs-tools' trigger would each build
# it, and each build takes most of the time under qemu-user); customize.sh builds it once at the end.
mmdebstrap --variant=minbase --arch="$ARCH" --components=main,non-free-firmware \
  --include="$PKGS" --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
  "${EXCLUDE[@]}" \
  --setup-hook='mkdir -p "$1/boot/firmware" "$1/etc/initramfs-tools/conf.d"' \
  --setup-hook="cp \"$HERE/initramfs.conf\" \"\$1/etc/initramfs-tools/conf.d/edge.conf\"" \
  --essential-hook="\"$HERE/initramfs-defer.sh\" \"\$1\" defer" \
  --customize-hook="\"$HERE/customize.sh\" \"\$1\" $ARCH \"$WHEEL\" \"$HERE\"" \
  "$SUITE" "$WORK/root" "$MIRROR"
T_ROOT=$(date +%s)

ROOT="$WORK/root"
ln -sf ../run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"
KVER=$(basename "$(ls -d "$ROOT"/lib/modules/* | sort -V | tail -1)")
echo "== boot partition (kernel $KVER)"
BOOT="$WORK/boot"
mkdir -p "$BOOT"
cp "$ROOT/boot/vmlinuz-$KVER" "$BOOT/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$BOOT/initrd.img"
if [ "$ARCH" = arm64 ]; then
  cp "$ROOT"/usr/lib/raspi-firmware/*.bin "$ROOT"/usr/lib/raspi-firmware/*.elf "$ROOT"/usr/lib/raspi-firmware/*.dat "$BOOT/" 2>/dev/null || true
  # Pi 3, 3+, CM3, Zero 2 W (bcm2837) and Pi 4, 400, CM4 (bcm2711)
  cp "$ROOT"/usr/lib/linux-image-"$KVER"/broadcom/bcm2837-*.dtb "$ROOT"/usr/lib/linux-image-"$KVER"/broadcom/bcm2711-*.dtb "$BOOT/"
  for dtb in bcm2837-rpi-3-b bcm2837-rpi-3-b-plus bcm2837-rpi-zero-2-w bcm2711-rpi-4-b bcm2711-rpi-400 bcm2711-rpi-cm4-io; do
    [ -f "$BOOT/$dtb.dtb" ] || { echo "image/build.sh: the kernel has no $dtb.dtb" >&2; exit 1; }
  done
  mkdir -p "$BOOT/overlays"
  cp "$ROOT"/usr/lib/raspi-firmware/overlays/* "$BOOT/overlays/" 2>/dev/null || true
  cp "$HERE/bootfs/config.txt" "$BOOT/config.txt"
  echo "console=tty0 console=ttyS1,115200 root=LABEL=edgeroot rw rootwait fsck.repair=yes" > "$BOOT/cmdline.txt"
else
  echo "console=ttyS0,115200 root=LABEL=edgeroot rw rootwait fsck.repair=yes" > "$BOOT/cmdline.txt"
fi
cp -r "$HERE/bootfs/edge" "$BOOT/edge"
# Whatever raspi-firmware's kernel hook left in the root's /boot/firmware is on the FAT already.
rm -rf "${ROOT:?}/boot/firmware" && mkdir -p "$ROOT/boot/firmware"

BOOT_IMG="$WORK/boot.vfat"
mkfs.vfat -C -F 32 -n EDGEBOOT "$BOOT_IMG" $((BOOT_MB * 1024)) >/dev/null
mcopy -s -i "$BOOT_IMG" "$BOOT"/* ::/

echo "== root filesystem"
# (head ends the pipe early: the SIGPIPE of sort must not end the build under pipefail)
{ du -x -m -d 3 "$ROOT" 2>/dev/null | sort -rn | head -n 12 | sed 's/^/   MiB /'; } || true
ROOT_KB=$(du -sk "$ROOT" | cut -f1)
ROOT_IMG="$WORK/root.ext4"
# Sized to the files plus ROOT_SLACK_MB free; retried only when the files did not fit (image/mkroot.sh).
SIZES=$("$HERE/mkroot.sh" "$ROOT" "$ROOT_IMG" "$ROOT_SLACK_MB")
read -r ROOT_MB FREE_MB <<<"$SIZES"
echo "   root: $((ROOT_KB / 1024)) MiB of files, partition $ROOT_MB MiB with $FREE_MB MiB free"

echo "== partition table"
START_MB=4
TOTAL_MB=$(( START_MB + BOOT_MB + ROOT_MB ))
truncate -s "${TOTAL_MB}M" "$IMG"
sfdisk -q "$IMG" <<PARTS
label: dos
label-id: 0xed6e0001
start=${START_MB}MiB, size=${BOOT_MB}MiB, type=c, bootable
start=$(( START_MB + BOOT_MB ))MiB, type=83
PARTS
dd if="$BOOT_IMG" of="$IMG" bs=1M seek=$START_MB conv=notrunc,sparse status=none
dd if="$ROOT_IMG" of="$IMG" bs=1M seek=$(( START_MB + BOOT_MB )) conv=notrunc,sparse status=none
T_END=$(date +%s)

RAW=$(stat -c %s "$IMG")
cat > "$OUT/build.json" <<JSON
{"arch": "$ARCH", "suite": "$SUITE", "kernel": "$KVER", "raw_bytes": $RAW,
 "rootfs_s": $((T_ROOT - T0)), "total_s": $((T_END - T0)), "boot_offset_mb": $START_MB,
 "root_files_mb": $((ROOT_KB / 1024)), "root_mb": $ROOT_MB, "root_free_mb": $FREE_MB, "boot_mb": $BOOT_MB}
JSON
rm -rf "$WORK"
echo "== $IMG: $((RAW / 1048576)) MiB raw, built in $((T_END - T0)) s"
