"""Composition root: config -> transports -> drivers -> cycle -> uplink; signals, sd_notify."""
