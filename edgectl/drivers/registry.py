"""Build the drivers of a site's [[device]] entries: protocol driver, then role driver.

A device's `protocol` chooses the protocol driver and its `profile` the device maps (all the
maps of that profile, among which the firmware version chooses for a Modbus vendor device);
the maps' role chooses the role driver. Every Modbus device shares one ModbusTransport, so
that devices behind one endpoint (units of a gateway, drops of an RS-485 line) share its
connection. Drivers are built on first use, so that one device's problem does not stop
another from being read.

Endpoints as a site file gives them:

    modbus-tcp  "host:port" (port 502 if omitted)
    modbus-rtu  "/dev/ttyUSB0?baudrate=9600&parity=E"
    opcua       "host:port" or "opc.tcp://host:port/path"
    redfish     "host:port" (http on loopback, else https), "https://host[:port]", or with
                the chassis: "https://host/redfish/v1/Chassis/<id>" (otherwise the chassis
                whose id is the device id, else the BMC's only chassis)

OPC UA security comes from the device's `security`, `certificate`, `private_key` and
`server_certificate` keys (paths relative to the site file); a session without security
only where the file says security = "none". A caller may override it per device id.
"""

from __future__ import annotations

import difflib
import ipaddress
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from edgectl.config.site import Device, Site
from edgectl.devicemaps.loader import MapIndex, load_maps
from edgectl.devicemaps.schema import DeviceMap
from edgectl.drivers.modbus import ModbusDevice
from edgectl.drivers.opcua import OpcUaDevice
from edgectl.drivers.points import ModbusPoints, OpcUaPoints, PointDevice, RedfishPoints
from edgectl.drivers.redfish import RedfishDevice
from edgectl.drivers.roles import DEFAULT_REVERT_S, RoleDriver, role_driver
from edgectl.errors import InputError, Problem, UsageError
from edgectl.transport.modbus import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, ModbusTransport
from edgectl.transport.modbus import parse_endpoint as parse_modbus_endpoint
from edgectl.transport.opcua import OpcUaSecurity, Security
from edgectl.transport.redfish import RedfishAuth

__all__ = [
    "MAP_PROTOCOLS",
    "DeviceRegistry",
    "is_loopback",
    "opcua_url",
    "redfish_location",
]

# Which map protocols a site protocol can carry.
MAP_PROTOCOLS: dict[str, tuple[str, ...]] = {
    "modbus-tcp": ("sunspec", "modbus"),
    "modbus-rtu": ("sunspec", "modbus"),
    "opcua": ("opcua",),
    "redfish": ("redfish",),
}
_OPCUA_TIMEOUT_S = 2.0
_REDFISH_TIMEOUT_S = 2.0
_CHASSIS_PATH = "/redfish/v1/Chassis/"


class DeviceRegistry:
    """The drivers of one site's devices, built on first use and closed together."""

    def __init__(
        self,
        site: Site,
        *,
        site_file: str = "site file",
        maps: MapIndex | None = None,
        transport: ModbusTransport | None = None,
        security: Security | Mapping[str, Security] | None = None,
        redfish_auth: RedfishAuth | Mapping[str, RedfishAuth] | None = None,
        clock: Callable[[], float] = time.monotonic,
        timeout_s: float | None = None,
        retries: int | None = None,
        revert_s: float = DEFAULT_REVERT_S,
    ) -> None:
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.site = site
        self.site_file = site_file
        self.maps = maps if maps is not None else load_maps()
        self._own_transport = transport is None
        self.transport = transport if transport is not None else ModbusTransport(clock=clock)
        self._security = security
        self._auth = redfish_auth
        self._clock = clock
        self._timeout_s = timeout_s
        self._retries = retries
        self._revert_s = revert_s
        self._points: dict[str, PointDevice] = {}
        self._drivers: dict[str, RoleDriver] = {}

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.site.devices]

    def entry(self, device_id: str) -> Device:
        """The site's [[device]] with this id; UsageError naming the known ones."""
        for device in self.site.devices:
            if device.id == device_id:
                return device
        known = self.ids
        close = difflib.get_close_matches(device_id, known, n=1)
        hint = f', did you mean "{close[0]}"?' if close else ""
        listed = ", ".join(known) if known else "none: the file has no [[device]] entry"
        raise UsageError(f'{self.site_file}: no device "{device_id}"{hint} (devices: {listed})')

    def maps_for(self, device_id: str) -> list[DeviceMap]:
        """The maps of the device's profile; InputError if there are none for its protocol."""
        device = self.entry(device_id)
        try:
            maps = self.maps.for_profile(device.profile)
        except KeyError as exc:
            raise self._problem(device, "profile", str(exc.args[0])) from None
        protocol = maps[0].map.protocol
        if protocol not in MAP_PROTOCOLS[device.protocol]:
            raise self._problem(
                device,
                "profile",
                f'profile "{device.profile}" is a {protocol} map, which protocol '
                f'"{device.protocol}" cannot carry',
            )
        return maps

    def points(self, device_id: str) -> PointDevice:
        """The device's protocol driver, as a PointDevice."""
        found = self._points.get(device_id)
        if found is None:
            found = self._build_points(self.entry(device_id))
            self._points[device_id] = found
        return found

    def driver(self, device_id: str) -> RoleDriver:
        """The device's role driver (PowerSource, Battery, Rack, ... by its maps' role)."""
        found = self._drivers.get(device_id)
        if found is None:
            found = role_driver(
                self.points(device_id),
                clock=self._clock,
                revert_s=self._revert_s,
                rack_range_w=self._rack_range_w(device_id),
            )
            self._drivers[device_id] = found
        return found

    def drivers(self) -> dict[str, RoleDriver]:
        """Every device's role driver, by device id."""
        return {device_id: self.driver(device_id) for device_id in self.ids}

    async def close(self) -> None:
        for points in self._points.values():
            await points.close()
        self._points.clear()
        self._drivers.clear()
        if self._own_transport:
            await self.transport.close()

    def _build_points(self, device: Device) -> PointDevice:
        maps = self.maps_for(device.id)
        if device.protocol in ("modbus-tcp", "modbus-rtu"):
            return self._modbus(device, maps)
        if device.protocol == "opcua":
            return self._opcua(device, maps[0])
        return self._redfish(device, maps[0])

    def _modbus(self, device: Device, maps: list[DeviceMap]) -> ModbusPoints:
        try:
            endpoint = parse_modbus_endpoint(device.endpoint)
        except ValueError as exc:
            raise self._problem(device, "endpoint", str(exc)) from None
        if endpoint.is_serial != (device.protocol == "modbus-rtu"):
            expected = "a serial device path" if device.protocol == "modbus-rtu" else "host:port"
            raise self._problem(
                device, "endpoint", f'protocol "{device.protocol}" needs {expected}'
            )
        driver = ModbusDevice(
            device.id,
            device.endpoint,
            device.unit,
            maps,
            self.transport,
            self._clock,
            timeout_s=self._timeout_s or DEFAULT_TIMEOUT_S,
            retries=self._retries if self._retries is not None else DEFAULT_RETRIES,
        )
        return ModbusPoints(driver, maps)

    def _opcua(self, device: Device, device_map: DeviceMap) -> OpcUaPoints:
        try:
            url = opcua_url(device.endpoint)
        except ValueError as exc:
            raise self._problem(device, "endpoint", str(exc)) from None
        security = self._security_for(device, url)
        timeout_s = self._timeout_s or _OPCUA_TIMEOUT_S
        driver = OpcUaDevice(device.id, url, device_map, security, self._clock, timeout_s=timeout_s)
        return OpcUaPoints(driver, url, first_values_s=timeout_s)

    def _redfish(self, device: Device, device_map: DeviceMap) -> RedfishPoints:
        try:
            base, chassis = redfish_location(device.endpoint)
        except ValueError as exc:
            raise self._problem(device, "endpoint", str(exc)) from None
        auth = self._auth.get(device.id) if isinstance(self._auth, Mapping) else self._auth
        timeout_s = self._timeout_s or _REDFISH_TIMEOUT_S

        def make(chassis_id: str) -> RedfishDevice:
            return RedfishDevice(
                device.id, base, chassis_id, device_map, auth, self._clock, timeout_s=timeout_s
            )

        return RedfishPoints(
            device.id,
            base,
            device_map,
            make,
            chassis_id=chassis,
            auth=auth,
            timeout_s=timeout_s,
        )

    def _security_for(self, device: Device, url: str) -> Security:
        chosen: Security | None
        if isinstance(self._security, Mapping):
            chosen = self._security.get(device.id)
        else:
            chosen = self._security
        if chosen is not None:
            return chosen
        if device.security == "none":
            return "none"
        policy, mode = device.security.split("-", 1)
        base = Path(self.site_file).parent if self.site_file else Path()
        files = {}
        for key in ("certificate", "private_key", "server_certificate"):
            path = base / str(getattr(device, key))
            if not path.is_file():
                raise self._problem(device, key, f"no such file: {path}")
            files[key] = path
        return OpcUaSecurity(policy=policy, mode=mode, **files)

    def _rack_range_w(self, device_id: str) -> tuple[float, float] | None:
        for rack in self.site.racks:
            if rack.device == device_id:
                return rack.p_min_w, rack.p_max_w
        return None

    def _problem(self, device: Device, key: str, message: str) -> InputError:
        index = self.site.devices.index(device)
        where = f"device[{index}].{key}"
        return InputError([Problem(self.site_file, where, f'{message} (device "{device.id}")')])


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def opcua_url(endpoint: str) -> str:
    """An OPC UA endpoint as a URL: "host:port" -> "opc.tcp://host:port"."""
    text = endpoint.strip()
    url = text if "://" in text else f"opc.tcp://{text}"
    parts = urlsplit(url)
    if parts.scheme != "opc.tcp" or not parts.hostname:
        raise ValueError(f"expected host:port or opc.tcp://host:port/path, got {endpoint!r}")
    try:
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError:
        raise ValueError(f"invalid port in {endpoint!r}") from None
    return url


def redfish_location(endpoint: str) -> tuple[str, str | None]:
    """A Redfish endpoint as (scheme://host[:port], chassis id or None)."""
    text = endpoint.strip()
    if "://" not in text:
        host = urlsplit(f"//{text}").hostname or ""
        text = f"{'http' if is_loopback(host) else 'https'}://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected host:port or https://host[:port], got {endpoint!r}")
    path = parts.path.rstrip("/")
    chassis = None
    if path:
        if not path.startswith(_CHASSIS_PATH) or "/" in path[len(_CHASSIS_PATH) :]:
            raise ValueError(f"a path must name a chassis, {_CHASSIS_PATH}<id>, got {parts.path!r}")
        chassis = unquote(path[len(_CHASSIS_PATH) :])
    if parts.query or parts.fragment:
        raise ValueError(f"no query or fragment in a Redfish endpoint, got {endpoint!r}")
    return f"{parts.scheme}://{parts.netloc}", chassis
