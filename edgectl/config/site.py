"""Typed model of a site file. Field names are the TOML keys; units are in the names.

Shape and per-field checks live here (pydantic reports every one at once, with its
key path). Checks across entries (ids, references, connectivity) live in
`edgectl.config.load`, which is what `edgectl check-config` and the daemon call.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SourceKind = Literal["pv", "wind", "bess", "grid"]
DROOP_KINDS = ("bess", "grid")  # converters that hold the bus voltage by droop
RENEWABLE_KINDS = ("pv", "wind")  # constant-power (MPPT) injections
_BESS_KEYS = ("p_charge_max_w", "capacity_wh", "soc_min", "soc_max")
_DROOP_KEYS = ("v_ref_v", "droop_r_ohm", "i_max_a")
_GRID_KEYS = ("p_export_max_w",)  # optional


def _kinds_having(key: str) -> str:
    """Name the source kinds that take a kind-specific key, for messages."""
    if key in _BESS_KEYS:
        return "kind bess"
    if key in _GRID_KEYS:
        return "kind grid"
    return "kinds " + " and ".join(DROOP_KINDS)


def _num(x: float) -> str:
    """A number as an operator wrote it: 120000, not 120000.0."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


class _Strict(BaseModel):
    # Refuse, never repair: unknown keys are errors, "12" is not a number and neither is
    # inf or nan (TOML allows both; no rating or resistance of a real site is either).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class SiteInfo(_Strict):
    id: str = Field(min_length=1)
    v_nominal_v: float = Field(gt=0)
    latitude_deg: float = Field(default=40.0, ge=-90, le=90)


class Control(_Strict):
    period_s: float = Field(default=1.0, ge=0.1, le=60)
    v_min_pu: float = Field(default=0.95, gt=0, lt=1)
    v_max_pu: float = Field(default=1.05, gt=1, lt=2)
    green_share_min: float = Field(default=0.8, ge=0, le=1)
    grid_import_max_w: float = Field(ge=0)
    ride_through_s: float = Field(default=300.0, ge=0)
    # A rack that was switched off comes back only when the spare supply exceeds its
    # p_min_w by this fraction and it has been off this long: hysteresis against flapping.
    rack_on_margin: float = Field(default=0.2, ge=0, le=10)
    rack_min_off_s: float = Field(default=30.0, ge=0)
    # The green share is kept over this rolling window (the rule counts energy, not power).
    green_window_s: float = Field(default=86_400.0, ge=60, le=366 * 86_400)


class Daemon(_Strict):
    """How `edgectl run` behaves on the gateway; every key has a default."""

    # Loopback "host:port" or "unix:/path": the status API has no authentication.
    status_listen: str = Field(default="127.0.0.1:8470", min_length=1)
    # A reading older than this counts as lost; unset: 3 control periods, at least 2 s.
    stale_s: float | None = Field(default=None, gt=0, le=3600)
    # An input must be back (or a fault gone) this long before a state is left: hysteresis.
    recover_s: float = Field(default=10.0, ge=0, le=3600)
    # STARTING lasts until every device has answered once, or this long at most.
    startup_s: float = Field(default=10.0, ge=0, le=600)
    # Written with every setpoint as the device's fallback timer (SunSpec *_RvrtTms).
    revert_s: float = Field(default=60.0, ge=1, le=3600)
    # The flight recorder keeps this many cycles (snapshot and decision) in memory: two
    # minutes at 1 Hz, a few tens of MB on a site of a thousand racks.
    recorder_cycles: int = Field(default=120, ge=1, le=100_000)


class Uplink(_Strict):
    """Where availability reports and audit records go, and where leases come from."""

    report_period_s: float = Field(default=5.0, ge=0.5, le=3600)
    # The scheduler's endpoint: reports and audit records are POSTed here (https, or http
    # on loopback only), with the bearer token read from token_file, TLS checked against
    # ca_file when given. Paths are relative to the site file.
    scheduler_url: str | None = Field(default=None, min_length=1)
    token_file: str | None = Field(default=None, min_length=1)
    ca_file: str | None = Field(default=None, min_length=1)
    # The fleet broker: reports retained on <topic_prefix>/availability, leases asked on
    # <topic_prefix>/leases/request.
    mqtt_host: str | None = Field(default=None, min_length=1)
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_topic_prefix: str = Field(default="edgectl", min_length=1)
    mqtt_username: str | None = Field(default=None, min_length=1)
    mqtt_password_file: str | None = Field(default=None, min_length=1)
    mqtt_ca_file: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _pairs(self) -> Uplink:
        problems = []
        if self.scheduler_url is None and (self.token_file or self.ca_file):
            problems.append("scheduler_url: required when token_file or ca_file is given")
        if self.mqtt_host is None and (
            self.mqtt_username or self.mqtt_password_file or self.mqtt_ca_file
        ):
            problems.append("mqtt_host: required when other mqtt_ keys are given")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Bus(_Strict):
    id: str = Field(min_length=1)
    v_nominal_v: float | None = Field(default=None, gt=0)


class Line(_Strict):
    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(min_length=1)
    from_bus: str = Field(alias="from", min_length=1)
    to_bus: str = Field(alias="to", min_length=1)
    r_ohm: float = Field(gt=0)
    i_max_a: float = Field(gt=0)


class Source(_Strict):
    id: str = Field(min_length=1)
    kind: SourceKind
    bus: str = Field(min_length=1)
    p_max_w: float = Field(ge=0)
    device: str | None = None
    # battery only
    p_charge_max_w: float | None = Field(default=None, ge=0)
    capacity_wh: float | None = Field(default=None, gt=0)
    soc_min: float | None = Field(default=None, ge=0, le=1)
    soc_max: float | None = Field(default=None, ge=0, le=1)
    # droop-controlled converters (bess, grid): I = (v_ref_v - V) / droop_r_ohm, |I| <= i_max_a
    v_ref_v: float | None = Field(default=None, gt=0)
    droop_r_ohm: float | None = Field(default=None, gt=0)
    i_max_a: float | None = Field(default=None, gt=0)
    # grid only: most the tie may export; 0 for a site that must not feed back. Unset, the
    # tie's droop works both ways up to i_max_a.
    p_export_max_w: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _keys_of_kind(self) -> Source:
        needed: tuple[str, ...] = ()
        if self.kind == "bess":
            needed = _BESS_KEYS
        if self.kind in DROOP_KINDS:
            needed += _DROOP_KEYS
        allowed = set(needed) | (set(_GRID_KEYS) if self.kind == "grid" else set())
        missing = [k for k in needed if getattr(self, k) is None]
        extra = [
            k
            for k in (*_BESS_KEYS, *_DROOP_KEYS, *_GRID_KEYS)
            if k not in allowed and getattr(self, k) is not None
        ]
        problems = [f'{k}: missing required key for kind "{self.kind}"' for k in missing]
        problems += [
            f'{k}: not a key of kind "{self.kind}" (only for {_kinds_having(k)})' for k in extra
        ]
        if (
            self.kind == "bess"
            and self.soc_min is not None
            and self.soc_max is not None
            and self.soc_min >= self.soc_max
        ):
            problems.append(
                f"soc_min: must be below soc_max, got {_num(self.soc_min)} >= {_num(self.soc_max)}"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def is_droop(self) -> bool:
        return self.kind in DROOP_KINDS

    def droop_current_limits_a(self) -> tuple[float, float]:
        """(most absorbed, most injected) current of a droop converter, in A."""
        i_max = self.i_max_a if self.i_max_a is not None else 0.0
        absorb = i_max
        if self.p_export_max_w is not None and self.v_ref_v:
            absorb = min(i_max, self.p_export_max_w / self.v_ref_v)
        return -absorb, i_max


class Rack(_Strict):
    id: str = Field(min_length=1)
    bus: str = Field(min_length=1)
    p_min_w: float = Field(ge=0)
    p_max_w: float = Field(gt=0)
    tier: int = Field(ge=0, le=3)
    ramp_w_per_s: float = Field(gt=0)
    device: str | None = None

    @model_validator(mode="after")
    def _min_below_max(self) -> Rack:
        if self.p_min_w > self.p_max_w:
            raise ValueError(
                f"p_min_w: must not exceed p_max_w, got {_num(self.p_min_w)} > {_num(self.p_max_w)}"
            )
        return self


OpcUaSecurityMode = Literal["none", "Basic256Sha256-Sign", "Basic256Sha256-SignAndEncrypt"]
_OPCUA_FILES = ("certificate", "private_key", "server_certificate")


class Device(_Strict):
    id: str = Field(min_length=1)
    protocol: Literal["modbus-tcp", "modbus-rtu", "opcua", "redfish"]
    endpoint: str = Field(min_length=1)
    unit: int = Field(default=1, ge=0, le=255)
    profile: str = Field(min_length=1)
    # OPC UA only. Secure by default: a session without security needs security = "none"
    # written in the file. The files are paths relative to the site file: this client's
    # certificate (DER) and private key (PEM), and the server's certificate.
    security: OpcUaSecurityMode = "Basic256Sha256-SignAndEncrypt"
    certificate: str | None = None
    private_key: str | None = None
    server_certificate: str | None = None

    @model_validator(mode="after")
    def _security_keys(self) -> Device:
        problems = []
        if self.protocol != "opcua":
            if "security" in self.model_fields_set:
                problems.append(f'security: only for protocol "opcua", not "{self.protocol}"')
            problems += [
                f'{k}: only for protocol "opcua", not "{self.protocol}"'
                for k in _OPCUA_FILES
                if getattr(self, k) is not None
            ]
        elif self.security == "none":
            problems += [
                f'{k}: not used with security = "none"'
                for k in _OPCUA_FILES
                if getattr(self, k) is not None
            ]
        else:
            problems += [
                f'{k}: required for security "{self.security}" (or write security = "none" '
                "for a session without security)"
                for k in _OPCUA_FILES
                if getattr(self, k) is None
            ]
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Site(_Strict):
    model_config = ConfigDict(populate_by_name=True)

    site: SiteInfo
    control: Control
    buses: list[Bus] = Field(alias="bus", min_length=1)
    lines: list[Line] = Field(alias="line", default_factory=list)
    sources: list[Source] = Field(alias="source", min_length=1)
    racks: list[Rack] = Field(alias="rack", default_factory=list)
    devices: list[Device] = Field(alias="device", default_factory=list)
    daemon: Daemon = Field(default_factory=Daemon)
    uplink: Uplink = Field(default_factory=Uplink)

    def bus_v_nominal_v(self, bus: Bus) -> float:
        return bus.v_nominal_v if bus.v_nominal_v is not None else self.site.v_nominal_v

    def sources_of(self, *kinds: str) -> list[Source]:
        return [s for s in self.sources if s.kind in kinds]
