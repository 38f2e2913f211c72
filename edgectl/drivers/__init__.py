"""Devices by role: map-driven drivers that turn wire values into Readings and setpoints
into writes, and offer small capabilities to the control layer."""
