"""JSON Schemas of what edgectl sends upstream and accepts (docs/scheduler.md)."""
