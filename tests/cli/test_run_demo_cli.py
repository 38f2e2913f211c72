"""`edgectl run` refuses bad input with one line and its exit status; `edgectl demo
--headless` plays part of the demo day over the real protocols and sums it up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "small_site.toml"


def edgectl(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgectl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--config", "/nonexistent/site.toml"], 2, "/nonexistent/site.toml: no such file"),
        (["--config", str(EXAMPLE), "--status", "10.0.0.1:80"], 64, "not a loopback address"),
        (["--config", str(EXAMPLE), "--status", "127.0.0.1:http"], 64, "127.0.0.1:http"),
        (["--config", str(EXAMPLE), "--time-scale", "0"], 64, "--time-scale 0"),
        (["--config", str(EXAMPLE), "--state-dir", "/proc/none"], 2, "/proc/none/edgectl.sqlite"),
    ],
)
def test_bad_input_is_one_line_and_its_status(
    args: list[str], code: int, needle: str, tmp_path: Path
) -> None:
    if "--state-dir" not in args:
        args = [*args, "--state-dir", str(tmp_path / "state")]
    result = edgectl("run", *args)
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("edgectl run:")]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_site_file_with_errors_is_refused_before_any_device_is_polled(tmp_path: Path) -> None:
    bad = tmp_path / "site.toml"
    bad.write_text(EXAMPLE.read_text().replace("ramp_w_per_s = 24_000.0", "ramp_w_per_s = -1"))
    result = edgectl("run", "--config", str(bad), "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 2
    assert "rack[0].ramp_w_per_s" in result.stderr
    assert not (tmp_path / "s").exists()


def test_demo_headless_plays_and_sums_up(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgectl", "demo", "--headless", "--duration", "12"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith("edgectl demo: demo, 06:00 to ")
    assert "STARTING -> NORMAL" in out
    assert "green share of the racks' energy" in out
    cycles = int(out.split("cycles ")[1].split(",")[0])
    assert cycles > 20  # the daemon cycled against the simulator's devices
    assert (tmp_path / "edgectl-demo.log").stat().st_size > 0


def test_demo_refuses_a_bad_speed() -> None:
    result = edgectl("demo", "--speed", "0", "--headless")
    assert result.returncode == 64
    assert "--speed 0" in result.stderr
