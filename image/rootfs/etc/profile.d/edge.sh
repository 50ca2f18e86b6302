# The edge command finds the service's device through its data dir (docs/install.md).
export EDGE_DATA_DIR=/var/lib/edge
