"""The status document as a person reads it: one rendering for `edgectl status` and the
live view of `edgectl demo`.

Top to bottom: a header (site, state and why, cycle timing), the supply (renewables
against what they could give, each battery, the grid against its budget, the bus voltage
band, the green share), the racks by tier, and the last decision with its reasons. Any
value of the document may be null or missing, and is then shown as "-": the view never
guesses a number. Colour only repeats what the text says, so the plain text of a pipe
reads the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from rich import box
from rich.columns import Columns
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.constrain import Constrain
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

__all__ = ["MAX_WIDTH", "SMALL_SITE_RACKS", "render_status"]

# Wider than this the view only spreads out; it is laid out for 100 columns.
MAX_WIDTH = 100
# Up to this many racks each gets a cell of its own; more, and only the tiers are shown.
SMALL_SITE_RACKS = 24

_STATE_STYLES = {
    "NORMAL": "bold green",
    "DEGRADED": "bold yellow",
    "SAFE": "bold red",
    "STARTING": "bold blue",
    "STOPPING": "bold blue",
}
_RENEWABLES = {"pv": "PV", "wind": "Wind"}
_BAR_CELLS = 10
_UNKNOWN = "-"


def render_status(status: dict[str, Any]) -> RenderableType:
    """The status document (GET /v1/status) as header, supply, racks and decision."""
    doc = _dict(status)
    parts: list[RenderableType] = [
        _header(doc),
        _panel("Supply", _supply(doc)),
        _panel("Racks", _racks(_dict(doc.get("racks")))),
        _panel(_decision_title(_dict(doc.get("decision"))), _decision(doc)),
    ]
    return Constrain(Group(*parts), width=MAX_WIDTH)


def _header(doc: dict[str, Any]) -> RenderableType:
    state = _str(doc.get("state"))
    left = Text()
    left.append(_str(doc.get("site")) or "site ?", style="bold")
    left.append("  ")
    left.append(state or "state unknown", style=_STATE_STYLES.get(state or "", "bold"))
    reason = _str(doc.get("state_reason"))
    if reason:
        left.append(f"  {reason}")
    uptime = _num(doc.get("uptime_s"))
    if uptime is not None:
        left.append(f"  (up {_duration(uptime)})", style="dim")

    cycle = _dict(doc.get("cycle"))
    right = Text(no_wrap=True)
    right.append(f"cycle {_count(cycle.get('count'))}  ")
    right.append(f"{_ms(cycle.get('last_ms'))} ms, p99 {_ms(cycle.get('p99_ms'))} ms  ")
    overruns = _int(cycle.get("overruns"))
    plural = "" if overruns == 1 else "s"
    right.append(f"{_count(overruns)} overrun{plural}", style="yellow" if overruns else "dim")
    return _Header(left, right)


class _Header:
    """State and cycle timing on one line where they fit, else the timing below."""

    def __init__(self, left: Text, right: Text) -> None:
        self.left = left
        self.right = right

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.left.cell_len + 2 + self.right.cell_len <= options.max_width:
            grid = Table.grid(expand=True, padding=(0, 2))
            grid.add_column(ratio=1)
            grid.add_column(justify="right", no_wrap=True)
            grid.add_row(self.left, self.right)
            yield grid
        else:
            yield self.left
            yield self.right


def _panel(title: str, body: RenderableType) -> Panel:
    return Panel(
        body,
        title=title,
        title_align="left",
        box=box.ROUNDED,
        border_style="dim",
        padding=(0, 1),
    )


def _supply(doc: dict[str, Any]) -> RenderableType:
    sources = _dict(doc.get("sources"))
    green = _dict(doc.get("green"))
    table = Table.grid(padding=(0, 2))
    table.add_column(no_wrap=True)  # what
    table.add_column(justify="right", no_wrap=True)  # power
    table.add_column(no_wrap=True)  # against what
    table.add_column()  # notes

    by_kind: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, source in sources.items():
        entry = _dict(source)
        by_kind.setdefault(_str(entry.get("kind")) or "other", []).append((str(name), entry))

    for kind, label in _RENEWABLES.items():
        if kind in by_kind:
            table.add_row(*_renewable_row(label, by_kind.pop(kind)))
    for name, entry in by_kind.pop("bess", []):
        table.add_row(*_battery_row(name, entry))
    grid_sources = by_kind.pop("grid", [])
    for kind, members in sorted(by_kind.items()):
        table.add_row(*_renewable_row(kind, members))
    if grid_sources or green.get("grid_budget_w") is not None:
        table.add_row(*_grid_row(grid_sources, _num(green.get("grid_budget_w"))))

    if not sources:
        table.add_row("sources", _UNKNOWN, Text("none reported", style="dim"), "")
    table.add_row("Bus", *_bus(_dict(doc.get("bus"))))
    table.add_row("Green", *_green(green))
    upstream = _uplink(_dict(doc.get("uplink")))
    if upstream is not None:
        table.add_row("Upstream", *upstream)

    lines: list[RenderableType] = [table]
    silent = [
        f"{name} ({_str(entry.get('reason')) or 'no reason given'})"
        for name, entry in ((str(n), _dict(s)) for n, s in sources.items())
        if entry.get("valid") is False and _str(entry.get("kind")) != "grid"
    ]
    if silent:
        lines.append(Text("not reporting: " + ", ".join(silent), style="yellow"))
    return Group(*lines)


def _renewable_row(label: str, members: list[tuple[str, dict[str, Any]]]) -> list[Text]:
    entries = [entry for _, entry in members]
    counted = [e for e in entries if e.get("valid") is not False]
    p_w = _sum(e.get("p_w") for e in counted)
    available_w = _sum(e.get("available_w") for e in counted)
    curtailed_w = _sum(e.get("curtailed_w") for e in counted)
    notes = Text()
    if curtailed_w:
        notes.append(f"curtailed {_power(curtailed_w)}", style="yellow")
    reporting = sum(1 for e in entries if e.get("valid") is True)
    if reporting < len(entries):
        notes.append("  " if notes else "")
        notes.append(f"{reporting} of {len(entries)} reporting", style="yellow")
    elif len(entries) > 1:
        notes.append("  " if notes else "")
        notes.append(f"{len(entries)} reporting", style="dim")
    return [Text(label), Text(_power(p_w)), Text(f"of {_power(available_w)} available"), notes]


def _battery_row(name: str, entry: dict[str, Any]) -> list[Text]:
    p_w = _num(entry.get("p_w"))
    # A battery's p_w is > 0 discharging, < 0 charging.
    if p_w is None:
        doing = _UNKNOWN
    elif p_w > 0:
        doing = f"discharging {_power(p_w)}"
    elif p_w < 0:
        doing = f"charging {_power(-p_w)}"
    else:
        doing = "idle"
    notes = Text(_str(entry.get("mode")) or "", style="dim")
    if entry.get("valid") is False:
        notes = Text(_str(entry.get("reason")) or "not reporting", style="yellow")
    return [Text(name), Text(doing), _soc_bar(_num(entry.get("soc"))), notes]


def _soc_bar(soc: float | None) -> Text:
    if soc is None:
        return Text("░" * _BAR_CELLS + f" {_UNKNOWN} SOC", style="dim")
    filled = round(min(max(soc, 0.0), 1.0) * _BAR_CELLS)
    style = "red" if soc < 0.1 else "yellow" if soc < 0.25 else "green"
    bar = Text("█" * filled, style=style)
    bar.append("░" * (_BAR_CELLS - filled), style="dim")
    bar.append(f" {soc * 100:.0f} % SOC")
    return bar


def _grid_row(members: list[tuple[str, dict[str, Any]]], budget_w: float | None) -> list[Text]:
    entries = [entry for _, entry in members]
    p_w = _sum(e.get("p_w") for e in entries if e.get("valid") is not False)
    # The grid tie's p_w is > 0 importing.
    if p_w is None:
        doing = _UNKNOWN
    elif p_w < 0:
        doing = f"exporting {_power(-p_w)}"
    else:
        doing = f"importing {_power(p_w)}"
    over = p_w is not None and budget_w is not None and p_w > budget_w
    against = Text(f"of {_power(budget_w)} budget", style="red" if over else "")
    reasons = [_str(e.get("reason")) or "not reporting" for e in entries if e.get("valid") is False]
    notes = Text(", ".join(reasons), style="dim")
    return [Text("Grid"), Text(doing), against, notes]


def _bus(bus: dict[str, Any]) -> list[Text]:
    v_min, v_max = _num(bus.get("v_min_v")), _num(bus.get("v_max_v"))
    pu_min, pu_max = _num(bus.get("v_min_pu")), _num(bus.get("v_max_pu"))
    volts = f"{_fixed(v_min, 1)} to {_fixed(v_max, 1)} V"
    pu = Text(f"{_fixed(pu_min, 3)} to {_fixed(pu_max, 3)} pu")
    measured = bus.get("measured")
    notes = Text("")
    if measured is False:
        notes = Text("estimated, not measured", style="yellow")
    return [Text(volts), pu, notes]


def _green(green: dict[str, Any]) -> list[Text]:
    share, minimum = _num(green.get("share_rolling")), _num(green.get("green_share_min"))
    window = _num(green.get("window_s"))
    below = share is not None and minimum is not None and share < minimum
    value = Text(_percent(share), style="red" if below else "green" if share is not None else "")
    over = f"over {_duration(window)}" if window is not None else "rolling"
    against = Text(f"{over}, minimum {_percent(minimum)}")
    notes = Text("below the minimum", style="red") if below else Text("")
    return [value, against, notes]


def _uplink(uplink: dict[str, Any]) -> list[Text] | None:
    """Each sink's backlog: what the scheduler and the broker have not acknowledged yet."""
    sinks = {name: _dict(v) for name, v in uplink.items() if isinstance(v, dict)}
    if not sinks:
        return None
    behind = {name: _int(s.get("backlog")) for name, s in sinks.items()}
    waiting = sum(b for b in behind.values() if b)
    value = Text(f"{waiting} queued", style="yellow" if waiting else "green")
    against = Text(
        ", ".join(f"{name} {_count(behind[name])}" for name in sinks)
        + f"; last seq {_count(_int(uplink.get('last_seq')))}"
    )
    errors = [f"{name}: {e}" for name, s in sinks.items() if (e := _str(s.get("last_error")))]
    notes = Text("; ".join(errors), style="yellow") if errors else Text("")
    return [value, against, notes]


def _racks(racks: dict[str, Any]) -> RenderableType:
    if not racks:
        return Text("no racks reported", style="dim")
    tiers: dict[int | None, list[tuple[str, dict[str, Any]]]] = {}
    for name, rack in racks.items():
        entry = _dict(rack)
        tiers.setdefault(_int(entry.get("tier")), []).append((str(name), entry))
    order = sorted(tiers, key=lambda t: (t is None, t or 0))
    unit = _rack_unit(_dict(r) for r in racks.values())

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), show_edge=False)
    table.add_column("tier", justify="right", no_wrap=True)
    table.add_column("on", justify="right", no_wrap=True)
    table.add_column("capped", justify="right", no_wrap=True)
    table.add_column("draw", justify="right", no_wrap=True)
    table.add_column("caps", justify="right", no_wrap=True)
    table.add_column("demand", justify="right", no_wrap=True)
    for tier in order:
        members = [entry for _, entry in tiers[tier]]
        on = sum(1 for e in members if e.get("on") is True)
        capped = sum(1 for e in members if _capped(e))
        draw = _sum(e.get("p_w") for e in members if e.get("valid") is not False)
        table.add_row(
            "?" if tier is None else str(tier),
            f"{on}/{len(members)}",
            Text(str(capped), style="yellow" if capped else ""),
            _power(draw),
            _power(_sum(e.get("cap_w") for e in members)),
            _power(_sum(e.get("demand_w") for e in members)),
        )
    parts: list[RenderableType] = [table]

    if len(racks) <= SMALL_SITE_RACKS:
        cells = {tier: [_rack_cell(n, e, unit) for n, e in tiers[tier]] for tier in order}
        # One width for every cell, so that the tiers' columns line up.
        width = max(c.cell_len for row in cells.values() for c in row) + 1
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True)
        grid.add_column(ratio=1)
        for tier in order:
            grid.add_row(Text(_tier(tier), style="dim"), Columns(cells[tier], width=width))
        legend = f"each rack: draw/cap {unit[1]}; * capped below demand"
        parts += [Text(legend, style="dim"), grid]

    silent = [
        f"{name} ({_str(entry.get('reason')) or 'no reason given'})"
        for name, entry in ((str(n), _dict(r)) for n, r in racks.items())
        if entry.get("valid") is False
    ]
    if silent:
        parts.append(Text("not reporting: " + ", ".join(silent), style="yellow"))
    return Group(*parts)


def _rack_cell(name: str, rack: dict[str, Any], unit: tuple[float, str]) -> Text:
    scale, _ = unit
    cell = Text(no_wrap=True)
    if rack.get("valid") is False:
        cell.append(f"{name} ?/{_scaled(rack.get('cap_w'), scale)}", style="yellow")
        return cell
    if rack.get("on") is False:
        cell.append(f"{name} off", style="dim")
        return cell
    capped = _capped(rack)
    text = f"{name} {_scaled(rack.get('p_w'), scale)}/{_scaled(rack.get('cap_w'), scale)}"
    cell.append(text + ("*" if capped else ""), style="yellow" if capped else "")
    return cell


def _capped(rack: dict[str, Any]) -> bool:
    flag = rack.get("capped")
    if isinstance(flag, bool):
        return flag
    cap, demand = _num(rack.get("cap_w")), _num(rack.get("demand_w"))
    return cap is not None and demand is not None and cap < demand


def _rack_unit(racks: Iterable[dict[str, Any]]) -> tuple[float, str]:
    """One unit for every rack cell, from the largest cap: W, kW or MW."""
    largest = max((abs(v) for r in racks if (v := _num(r.get("cap_w"))) is not None), default=0.0)
    if largest >= 1e6:
        return 1e6, "MW"
    if largest >= 1e3:
        return 1e3, "kW"
    return 1.0, "W"


def _scaled(value: Any, scale: float) -> str:
    number = _num(value)
    if number is None:
        return _UNKNOWN
    scaled = number / scale
    return f"{scaled:.0f}" if abs(scaled) >= 10 or scale == 1.0 else f"{scaled:.1f}"


def _tier(tier: int | None) -> str:
    return "tier ?" if tier is None else f"tier {tier}"


def _decision_title(decision: dict[str, Any]) -> str:
    cycle = _int(decision.get("cycle"))
    return "Decision" if cycle is None else f"Decision, cycle {cycle}"


def _decision(doc: dict[str, Any]) -> RenderableType:
    decision = _dict(doc.get("decision"))
    if not decision:
        return Text("no decision yet", style="dim")
    lines: list[RenderableType] = []
    summary = (
        f"supply {_power(_num(decision.get('supply_w')))}, "
        f"served {_power(_num(decision.get('served_w')))}, "
        f"fixed load {_power(_num(decision.get('fixed_load_w')))}"
    )
    lines.append(Text(summary))
    shed, started = _names(decision.get("shed")), _names(decision.get("started"))
    if shed or started:
        moved = Text()
        if shed:
            moved.append("shed " + ", ".join(shed), style="yellow")
        if started:
            moved.append("; " if shed else "")
            moved.append("started " + ", ".join(started))
        lines.append(moved)
    for reason in _list(decision.get("reasons")):
        if reason is not None:
            lines.append(Text(f"- {_item(reason)}"))
    lines += _verify(_dict(decision.get("verify")))
    return Group(*lines)


def _verify(verify: dict[str, Any]) -> list[Text]:
    if not verify:
        return [Text("verify: not reported", style="dim")]
    converged = verify.get("converged")
    iterations = _int(verify.get("iterations"))
    after = "" if iterations is None else f" in {iterations} iteration"
    after += "" if iterations in (None, 1) else "s"
    line = Text("verify: ")
    if converged is True:
        line.append(f"converged{after}")
    elif converged is False:
        line.append(f"did not converge{after}", style="bold red")
    else:
        line.append("convergence unknown", style="dim")
    line.append(f", collapse margin {_fixed(_num(verify.get('collapse_margin')), 2)}")
    reduced = _num(verify.get("reduced_w"))
    if reduced:
        line.append(f", racks reduced by {_power(reduced)}", style="yellow")
    lines = [line]
    for violation in _list(verify.get("violations")):
        if violation is not None:
            lines.append(Text(f"! {_item(violation)}", style="red"))
    return lines


def _item(value: Any) -> str:
    """A reason or violation, as one line: a string as it is; an object by its message."""
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, dict):
        for key in ("message", "reason", "text"):
            if isinstance(value.get(key), str):
                return " ".join(value[key].split())
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def _names(value: Any) -> list[str]:
    return [str(v) for v in _list(value) if v is not None]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _num(value: Any) -> float | None:
    """A finite number, else None: null, NaN, a bool or a string are unknown."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _num(value)
    return int(number) if number is not None else None


def _sum(values: Iterable[Any]) -> float | None:
    """The sum of the known values; None when none is known."""
    known = [n for v in values if (n := _num(v)) is not None]
    return math.fsum(known) if known else None


def _count(value: Any) -> str:
    number = _int(value)
    return _UNKNOWN if number is None else str(number)


def _fixed(value: float | None, digits: int) -> str:
    return _UNKNOWN if value is None else f"{value:.{digits}f}"


def _ms(value: Any) -> str:
    number = _num(value)
    return _UNKNOWN if number is None else f"{number:.1f}"


def _percent(share: float | None) -> str:
    return _UNKNOWN if share is None else f"{share * 100:.1f} %"


def _power(watts: float | None) -> str:
    """W, kW or MW, whichever reads best: 980 W, 98.0 kW, 1.20 MW."""
    if watts is None:
        return _UNKNOWN
    size = abs(watts)
    if size >= 1e6:
        return f"{watts / 1e6:.2f} MW"
    if size >= 1e3:
        return f"{watts / 1e3:.1f} kW"
    return f"{watts:.0f} W"


def _duration(seconds: float) -> str:
    """A span as a person says it: 45 s, 12 min, 3 h 20 min, 24 h, 2 d 4 h."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    hours, minutes = divmod(s // 60, 60)
    if hours < 48:
        return f"{hours} h" if minutes == 0 else f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d" if hours == 0 else f"{days} d {hours} h"
