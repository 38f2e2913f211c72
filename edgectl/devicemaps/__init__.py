"""Device maps: the firmware_configs/ TOML files, validated, and the codecs that apply them."""
