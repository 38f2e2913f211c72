"""Device maps (TOML) shipped with edgectl; see firmware_configs/README.md."""
