"""The site description: TOML in, a validated, immutable Site out."""

from edgectl.config.site import Bus, Control, Device, Line, Rack, Site, SiteInfo, Source

__all__ = ["Bus", "Control", "Device", "Line", "Rack", "Site", "SiteInfo", "Source"]
