"""The one exception tree of edgectl, and the exit status each class maps to.

Operator errors (a bad file, a bad snapshot, a device that does not answer) are
EdgeErrors: the CLI prints their message on one line and exits with their
status. Anything else escaping is a bug and exits with EXIT_INTERNAL.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_INPUT = 2  # a site file, snapshot or other input file is invalid
EXIT_NO_SOLUTION = 3  # the power flow has no (stable) solution at that operating point
EXIT_DEVICE = 4  # a device could not be reached or answered with an error
EXIT_NO_KERNELS = 5  # compiled kernels required (EDGECTL_REQUIRE_CEXT=1) but not built
EXIT_USAGE = 64  # the command line itself is wrong (sysexits EX_USAGE)
EXIT_INTERNAL = 70  # a bug in edgectl (sysexits EX_SOFTWARE)


class EdgeError(Exception):
    """Root of every error edgectl raises on purpose."""

    exit_code = 1
    retryable = False


@dataclass(frozen=True)
class Problem:
    """One thing wrong in an input file: where, and what was expected."""

    file: str
    path: str  # key path such as rack[3].p_min_w; empty for the whole file
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}"


class InputError(EdgeError):
    """An input file (site description, snapshot) is invalid; carries every problem found."""

    exit_code = EXIT_INPUT

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class NoSolutionError(EdgeError):
    """The power flow found no stable operating point."""

    exit_code = EXIT_NO_SOLUTION


class KernelsMissingError(EdgeError):
    """Compiled kernels were required but only the NumPy reference is available."""

    exit_code = EXIT_NO_KERNELS


class UsageError(EdgeError):
    """The command line is wrong."""

    exit_code = EXIT_USAGE


class DeviceError(EdgeError):
    """A device could not be read or written."""

    exit_code = EXIT_DEVICE

    def __init__(self, device: str, message: str) -> None:
        self.device = device
        super().__init__(f"{device}: {message}")


class DeviceTimeout(DeviceError):
    """No answer within the device's timeout (after its retries)."""

    retryable = True


class DeviceUnreachable(DeviceError):
    """The connection could not be opened or was lost."""

    retryable = True


class ProtocolError(DeviceError):
    """The device answered with an error: a Modbus exception, an OPC UA bad status,
    an HTTP error status."""


class UnsupportedDevice(DeviceError):
    """No device map covers what the device says it is (model or firmware version)."""
