"""The site simulator: real protocol servers on loopback backed by a physical model."""
