"""Upstream: availability reports, power leases, store-and-forward, metrics, the audit ledger."""
