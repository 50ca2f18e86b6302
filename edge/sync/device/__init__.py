"""The device side of cloud sync: device streams, the leaf link, cloud commands played locally."""
