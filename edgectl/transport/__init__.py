"""Wire protocols: the only package that imports pymodbus, asyncua or aiohttp's client.

Nothing above it sees a library object: results come back as plain values, and
failures as edgectl.errors.DeviceError subclasses.
"""
