# Sourced by image/build.sh and image/mkroot.sh.
# mounts_under DIR: the mount points at or below DIR, deepest first (findmnt -r: one target a line).
mounts_under() { findmnt -rn -o TARGET | awk -v p="${1%/}" '$0 == p || index($0, p "/") == 1' | sort -r; }
