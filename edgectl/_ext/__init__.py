"""Compiled kernels land here at build time (built from cext/ by setup.py)."""
