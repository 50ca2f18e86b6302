"""The accounting system: one policy point and one meter every message between the device's
parts passes (docs/policy.md)."""
