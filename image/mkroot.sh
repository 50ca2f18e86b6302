#!/usr/bin/env bash
# Make the image's root filesystem from a directory, sized to its files, without loop devices.
#
#   image/mkroot.sh ROOT_DIR ROOT_IMG SLACK_MB     prints "ROOT_MB FREE_MB" (MiB) on stdout
#
# The partition holds the files, the filesystem's own tables and journal, and SLACK_MB free (blocks
# reserved for root included) for a first boot whose growfs has not run; the first boot grows it
# to the card. mkfs.ext4 -d is tried at an estimate (the files + 10 % + SLACK_MB) and grown by 10 %
# only while its log says the files did not fit ("Could not allocate block|inode in ext2
# filesystem"), at most MKFS_TRIES times and never beyond EDGE_IMAGE_ROOT_MAX_MB; any other mkfs
# error fails with its log. It is then made again with what is free beyond the slack given back
# (the tables shrink with it), and checked with e2fsck. Anything mounted under ROOT_DIR (a /proc,
# /sys or /dev left by the bootstrap) is refused: mkfs.ext4 -d would copy it or fail on it.
set -euo pipefail
ROOT=${1:?root directory} ROOT_IMG=${2:?root image file} SLACK_MB=${3:?slack MiB}
ROOT_MAX_MB=${EDGE_IMAGE_ROOT_MAX_MB:-2048}
MKFS_TRIES=5
MIN_MB=8     # the smallest root tried (an ext4 with a journal)
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
# shellcheck source=image/mounts.sh
. "$(cd "$(dirname "$0")" && pwd)/mounts.sh"
fail() { echo "image/mkroot.sh: $*" >&2; exit 1; }
show_log() { [ -f "$LOG" ] && sed 's/^/   /' "$LOG" >&2; return 0; }

[ -d "$ROOT" ] || fail "no root directory at $ROOT"
[ -d "$(dirname "$ROOT_IMG")" ] || fail "no directory for the root image $ROOT_IMG"
case "$SLACK_MB" in ''|*[!0-9]*) fail "SLACK_MB must be a whole number of MiB, not '$SLACK_MB'" ;; esac
case "$ROOT_MAX_MB" in ''|*[!0-9]*) fail "EDGE_IMAGE_ROOT_MAX_MB must be a whole number of MiB, not '$ROOT_MAX_MB'" ;; esac
ROOT=$(readlink -f "$ROOT")
MOUNTED=$(mounts_under "$ROOT")
if [ -n "$MOUNTED" ]; then
  echo "image/mkroot.sh: still mounted under $ROOT (unmount them first):" >&2
  echo "$MOUNTED" | sed 's/^/   /' >&2
  exit 1
fi

# try_mkfs SIZE_MB: 0 when made, 1 when the files did not fit; any other failure ends the script.
try_mkfs() {
  rm -f "$ROOT_IMG"
  if mkfs.ext4 -q -F -L edgeroot -O ^metadata_csum_seed -E root_owner=0:0 -d "$ROOT" "$ROOT_IMG" "${1}M" >"$LOG" 2>&1; then
    return 0
  fi
  grep -q 'Could not allocate \(block\|inode\) in ext2 filesystem' "$LOG" && return 1
  echo "image/mkroot.sh: mkfs.ext4 -d $ROOT failed at $1 MiB:" >&2; show_log; exit 1
}
free_mb() { dumpe2fs -h "$ROOT_IMG" 2>/dev/null | awk -F: '/^Free blocks/{f=$2} /^Block size/{b=$2} END{print int(f*b/1048576)}'; }

FILES_KB=$(du -sk "$ROOT" | cut -f1)
ROOT_MB=$(( FILES_KB * 110 / 100 / 1024 + SLACK_MB ))
[ "$ROOT_MB" -ge "$MIN_MB" ] || ROOT_MB=$MIN_MB
tries=0
while :; do
  [ "$ROOT_MB" -le "$ROOT_MAX_MB" ] || { show_log; fail "$((FILES_KB / 1024)) MiB of files need more than the root's limit of $ROOT_MAX_MB MiB (EDGE_IMAGE_ROOT_MAX_MB; $tries tries, the next at $ROOT_MB MiB)"; }
  tries=$(( tries + 1 ))
  try_mkfs "$ROOT_MB" && break
  [ "$tries" -lt "$MKFS_TRIES" ] || { show_log; fail "$((FILES_KB / 1024)) MiB of files did not fit a root of $ROOT_MB MiB after $tries tries"; }
  NEXT=$(( ROOT_MB * 110 / 100 + 1 ))
  echo "image/mkroot.sh: the files did not fit $ROOT_MB MiB ($(grep -m1 'Could not allocate' "$LOG")); trying $NEXT MiB" >&2
  ROOT_MB=$NEXT
done
for _ in 1 2 3; do
  FREE_MB=$(free_mb)
  [ "$FREE_MB" -gt $(( SLACK_MB + 16 )) ] || break
  SMALLER=$(( ROOT_MB - FREE_MB + SLACK_MB + 4 ))
  if try_mkfs "$SMALLER"; then ROOT_MB=$SMALLER; else try_mkfs "$ROOT_MB" || { show_log; fail "the root no longer fits $ROOT_MB MiB"; }; break; fi
done
FREE_MB=$(free_mb)
if [ "$FREE_MB" -lt "$SLACK_MB" ]; then
  ROOT_MB=$(( ROOT_MB + SLACK_MB - FREE_MB + 8 ))
  try_mkfs "$ROOT_MB" || { show_log; fail "the root with $SLACK_MB MiB free does not fit $ROOT_MB MiB"; }
  FREE_MB=$(free_mb)
fi
e2fsck -f -n "$ROOT_IMG" >"$LOG" 2>&1 || { show_log; fail "the root filesystem does not check clean"; }
echo "$ROOT_MB $FREE_MB"
