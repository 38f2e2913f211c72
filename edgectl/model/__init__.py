"""Site-level models built from the configuration: network, dispatch inputs."""
