"""Everything demo-only, in one place: the embedded demo fleet, its emulated hardware, the
stand-in actuator and the console view. The core never asks whether it runs the demo: the demo
is a config (:func:`edge.demo.fleet.demo_config`) plus layers it adds to the composition."""
