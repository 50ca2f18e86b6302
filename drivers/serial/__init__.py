"""Serial devices: MAVLink flight controller and NMEA GPS, with emulators on ptys."""
