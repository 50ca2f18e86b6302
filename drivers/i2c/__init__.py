"""I2C sensors: the bus seam (smbus2 / emulated), chip drivers and their emulated chip models."""
