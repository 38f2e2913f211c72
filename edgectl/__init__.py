"""edgectl: the site controller of a green-power direct-connection DC site."""

__version__ = "0.1.0"
