"""DC power flow of a site: the Python face of the Newton kernel in cext/powerflow.pyx.

Model (one convention for the whole solver): bus voltages V in volts; a constant-power
injection s_k in watts at each bus, positive for a source (PV, wind at their MPPT point)
and negative for a load (racks); lines are resistances; droop-controlled converters
(batteries, grid tie) inject I = clip((v_ref - V) / r_droop, i_min, i_max) amperes.
Injections into a bus are positive everywhere inside the solver.

Sparse Newton-Raphson in current-mismatch form: the Jacobian has the pattern of the
conductance matrix, so the fill-reducing order and the symbolic factorisation are done
once per topology (here, in `PowerFlow.__init__`), each iteration refactorises
numerically, and a solve warm-starts from the previous one. Measured against Z-bus with a
Newton fallback (notes/numerics.md), Newton wins once warm-started: 1-2 iterations where
Z-bus needs 6-9, and its iteration count does not grow near collapse.

"No solution" is told apart from "did not converge": the Jacobian is positive definite
exactly on the stable high-voltage branch, so its L D L^T pivots are the collapse
indicator. `collapse_margin` = min_k D_k / D0_k, with D0 the pivots of the unloaded
network: 1 with no load, falling to 0 at the nose of the PV curve.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from edgectl import kernels

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]

# Convergence: max current mismatch below this fraction of the site's current scale.
REL_TOL = 1e-10
MAX_ITER = 30
# Smallest load step of the continuation fallback, as a fraction of the operating point.
CONTINUATION_MIN_STEP = 1.0 / 256
# The flat start sits this fraction below the highest converter set voltage.
FLAT_BELOW_REF = 1e-4
# Iterates below this fraction of the nominal voltage are rejected: the bus has collapsed.
V_FLOOR_PU = 0.1
# A "solution" with a bus above this many times its nominal voltage is none: with more power
# injected than the converters can absorb, the current mismatch (P / V) also vanishes as the
# voltage runs off to infinity, and Newton can follow it there. No voltage band admits it
# (v_max_pu < 2).
V_RUNAWAY_PU = 2.0


class Status(enum.IntEnum):
    """Outcome of a solve; the values are shared with the compiled kernel."""

    CONVERGED = 0
    MAX_ITER = 1  # no convergence within the iteration limit, no sign of collapse
    COLLAPSE = 2  # no stable solution: beyond the voltage-collapse nose, or bus not held
    # Set by PowerFlow.solve, never by a kernel: more power injected than the converters can
    # absorb; no operating point, the bus voltage runs away.
    SURPLUS = 3


@dataclass(frozen=True)
class Topology:
    """The network as arrays: buses 0..n-1, lines and droop converters by bus index."""

    v_nominal_v: FloatArray  # per bus
    line_from: IndexArray
    line_to: IndexArray
    line_r_ohm: FloatArray
    droop_bus: IndexArray
    droop_r_ohm: FloatArray
    droop_v_ref_v: FloatArray
    droop_i_min_a: FloatArray  # most negative current (absorbing), <= 0
    droop_i_max_a: FloatArray  # most positive current (injecting), >= 0

    @property
    def droop_capacity_w(self) -> float:
        """Upper bound of what the droop converters can inject: i_max at v_ref."""
        return float(np.maximum(self.droop_i_max_a, 0.0) @ self.droop_v_ref_v)

    @property
    def droop_absorb_w(self) -> float:
        """What the droop converters can take from the bus: -i_min at v_ref."""
        return float(np.maximum(-self.droop_i_min_a, 0.0) @ self.droop_v_ref_v)

    @property
    def n_bus(self) -> int:
        return int(self.v_nominal_v.shape[0])

    def validate(self) -> None:
        n = self.n_bus
        if n == 0:
            raise ValueError("network has no bus")
        for name in ("line_from", "line_to", "droop_bus"):
            idx = getattr(self, name)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"{name}: bus index out of range 0..{n - 1}")
        if np.any(self.line_from == self.line_to):
            raise ValueError("line_from/line_to: a line connects a bus to itself")
        if np.any(~(self.line_r_ohm > 0)) or np.any(~(self.droop_r_ohm > 0)):
            raise ValueError("resistances must be positive")
        if np.any(self.droop_i_min_a > self.droop_i_max_a):
            raise ValueError("droop_i_min_a exceeds droop_i_max_a")
        if self.droop_bus.size == 0:
            raise ValueError("no droop-controlled converter: nothing holds the bus voltage")


@dataclass(frozen=True)
class PowerFlowResult:
    """Bus voltages, line and converter currents of one solve, with derived quantities."""

    status: Status
    iterations: int
    collapse_margin: float
    v_v: FloatArray
    line_i_a: FloatArray  # positive from line_from to line_to
    droop_i_a: FloatArray  # injected into the bus
    droop_saturated: npt.NDArray[np.bool_]
    topology: Topology = field(repr=False)
    net_load_w: float = 0.0  # -sum of the constant-power injections
    # Fraction of the requested injections the network carries: 1 when converged, the
    # largest fraction found by continuation when there is no solution.
    loadability: float | None = None

    @property
    def converged(self) -> bool:
        return self.status is Status.CONVERGED

    @property
    def line_loss_w(self) -> FloatArray:
        return self.line_i_a**2 * self.topology.line_r_ohm

    @property
    def losses_w(self) -> float:
        return float(self.line_loss_w.sum())

    @property
    def droop_p_w(self) -> FloatArray:
        return self.droop_i_a * self.v_v[self.topology.droop_bus]

    @property
    def message(self) -> str:
        if self.status is Status.CONVERGED:
            return f"converged in {self.iterations} iterations"
        if self.status is Status.COLLAPSE:
            carried = (
                f" (it carries at most {100 * self.loadability:.1f} % of this operating point)"
                if self.loadability is not None
                else ""
            )
            if self.net_load_w > self.topology.droop_capacity_w:
                return (
                    f"no stable operating point: the net load ({self.net_load_w / 1e6:.3f} MW) "
                    "exceeds what the droop converters can supply at their current limits "
                    f"({self.topology.droop_capacity_w / 1e6:.3f} MW)" + carried
                )
            return (
                "no stable operating point: the load is beyond the voltage-collapse limit "
                "of the network" + carried
            )
        if self.status is Status.SURPLUS:
            return (
                f"no operating point: a surplus of {-self.net_load_w / 1e3:.1f} kW that the "
                "converters cannot absorb (they take at most "
                f"{self.topology.droop_absorb_w / 1e3:.1f} kW); the bus voltage runs away"
            )
        return f"did not converge in {self.iterations} iterations"


class _Solver(Protocol):
    v_out: FloatArray
    line_i_out: FloatArray
    droop_i_out: FloatArray
    droop_saturated_out: npt.NDArray[np.uint8]

    def solve(
        self, s_bus: FloatArray, v_start: FloatArray, tol: float, max_iter: int, v_floor: float
    ) -> tuple[int, int, float]: ...


Implementation = Literal["compiled", "reference"]


class PowerFlow:
    """A solver bound to one topology; keeps the last solution to warm-start the next."""

    def __init__(self, topology: Topology, *, implementation: Implementation | None = None):
        topology.validate()
        self.topology = topology
        n = topology.n_bus
        line_g = 1.0 / topology.line_r_ohm
        droop_g = 1.0 / topology.droop_r_ohm
        self.order = fill_reducing_order(n, topology.line_from, topology.line_to, line_g)
        ap, ai, gx = conductance_pattern(self.order, topology.line_from, topology.line_to, line_g)
        args = (
            ap,
            ai,
            gx,
            self.order,
            np.ascontiguousarray(topology.line_from, dtype=np.intp),
            np.ascontiguousarray(topology.line_to, dtype=np.intp),
            np.ascontiguousarray(line_g),
            np.ascontiguousarray(topology.droop_bus, dtype=np.intp),
            np.ascontiguousarray(droop_g),
            np.ascontiguousarray(topology.droop_v_ref_v, dtype=np.float64),
            np.ascontiguousarray(topology.droop_i_min_a, dtype=np.float64),
            np.ascontiguousarray(topology.droop_i_max_a, dtype=np.float64),
        )
        if implementation is None:
            implementation = "compiled" if kernels._powerflow_ext is not None else "reference"
        self.implementation: Implementation = implementation
        self._solver: _Solver
        if implementation == "compiled":
            if kernels._powerflow_ext is None:
                raise RuntimeError("compiled power-flow kernel not built; " + kernels.BUILD_HINT)
            self._solver = kernels._powerflow_ext.NewtonSolver(*args)
        else:
            from edgectl.kernels._powerflow_reference import ReferenceNewtonSolver

            self._solver = ReferenceNewtonSolver(*args)
        v_nom = np.ascontiguousarray(topology.v_nominal_v, dtype=np.float64)
        # Flat start just below the highest set voltage of a converter that can supply, in per
        # unit of its bus: there that converter injects a little and is off its limits, so
        # Newton has a slope even when every other converter sits at a limit of 0 A (an
        # import-only grid tie above its set voltage, batteries held at a setpoint).
        self._flat = v_nom.copy()
        supplying = topology.droop_i_max_a > 0
        if np.any(supplying):
            ref_pu = topology.droop_v_ref_v[supplying] / v_nom[topology.droop_bus[supplying]]
            self._flat = v_nom * float(ref_pu.max()) * (1.0 - FLAT_BELOW_REF)
        self._v_floor = V_FLOOR_PU * float(v_nom.min())
        self._v_runaway = V_RUNAWAY_PU * float(v_nom.max())
        self._i_nominal = 1.0 / v_nom
        # Round-off floor of the mismatch: |G_kk| V is the largest term summed at a bus.
        diag = bus_sum(topology.line_from, line_g, n) + bus_sum(topology.line_to, line_g, n)
        diag += bus_sum(topology.droop_bus, droop_g, n)
        self._roundoff_a = 1e-13 * float((diag * v_nom).max())
        self._last: FloatArray | None = None

    def solve(
        self,
        s_bus_w: npt.ArrayLike,
        *,
        warm: bool = True,
        v_start: FloatArray | None = None,
        max_iter: int = MAX_ITER,
    ) -> PowerFlowResult:
        """Solve for the bus injections s_bus_w (W, sources positive, loads negative)."""
        s = np.ascontiguousarray(s_bus_w, dtype=np.float64)
        if s.shape != self._flat.shape:
            raise ValueError(f"s_bus_w: expected {self._flat.shape[0]} buses, got {s.shape}")
        if not np.isfinite(s).all():
            raise ValueError("s_bus_w: injections must be finite")
        if v_start is None:
            v_start = self._last if (warm and self._last is not None) else self._flat
        tol = max(REL_TOL * max(float(np.abs(s) @ self._i_nominal), 1.0), self._roundoff_a)
        iterations, status, margin = self._solver.solve(s, v_start, tol, max_iter, self._v_floor)
        loadability = 1.0 if status == Status.CONVERGED else None
        if status != Status.CONVERGED:
            iterations, status, margin, loadability = self._continuation(s, tol, max_iter)
        surplus_w = float(s.sum())  # injected beyond the constant-power loads
        if (
            status == Status.CONVERGED and float(self._solver.v_out.max()) > self._v_runaway
        ) or (status != Status.CONVERGED and surplus_w > self.topology.droop_absorb_w):
            status, loadability = int(Status.SURPLUS), None
        result = PowerFlowResult(
            status=Status(status),
            iterations=iterations,
            collapse_margin=float(margin),
            loadability=loadability,
            v_v=self._solver.v_out.copy(),
            line_i_a=self._solver.line_i_out.copy(),
            droop_i_a=self._solver.droop_i_out.copy(),
            droop_saturated=self._solver.droop_saturated_out.astype(bool),
            topology=self.topology,
            net_load_w=-float(s.sum()),
        )
        # Warm-start only from a stable solution; anything else restarts flat.
        self._last = result.v_v if result.converged else None
        return result

    def _continuation(
        self, s: FloatArray, tol: float, max_iter: int
    ) -> tuple[int, int, float, float]:
        """Trace the stable branch from no load to s when Newton alone did not converge.

        Newton from the previous or a flat start can wander when many converters switch
        into current limit at once; growing the load from zero along the stable branch
        either reaches s (a solution after all) or stops at the largest fraction of s the
        network can carry, which is reported as `loadability` with status COLLAPSE.
        """
        v = self._flat
        carried, step, total = 0.0, 0.25, 0
        while carried < 1.0 and step >= CONTINUATION_MIN_STEP:
            target = min(1.0, carried + step)
            it, status, margin = self._solver.solve(
                s * target, v, tol * max(target, 1e-3), max_iter, self._v_floor
            )
            total += it
            if status == Status.CONVERGED:
                carried = target
                v = self._solver.v_out.copy()
                step *= 2.0
            else:
                step *= 0.5
        if carried < 1.0:
            return total, int(Status.COLLAPSE), margin, carried
        return total, int(Status.CONVERGED), margin, 1.0


def bus_sum(index: IndexArray, values: FloatArray, n: int) -> FloatArray:
    """Sum of values per bus (float even when there are no values)."""
    return np.bincount(index, values, n).astype(np.float64, copy=False)


def fill_reducing_order(
    n: int, line_from: IndexArray, line_to: IndexArray, line_g: FloatArray
) -> IndexArray:
    """Elimination order of the buses, from SuperLU's minimum-degree ordering of G.

    SciPy exposes no symmetric fill-reducing ordering of its own, but SuperLU computes
    one (multiple minimum degree on A + A^T) and reports it. In symmetric mode with no
    pivoting the row and column permutations are equal, so perm_c is a symmetric order.
    On a radial network it gives zero fill (leaves are eliminated first).
    """
    if n == 1:
        return np.zeros(1, dtype=np.intp)
    rows = np.concatenate([line_from, line_to, np.arange(n)])
    cols = np.concatenate([line_to, line_from, np.arange(n)])
    # |G| + (degree + 1) I: same pattern as G, strictly diagonally dominant, never singular.
    degree = bus_sum(line_from, line_g, n) + bus_sum(line_to, line_g, n)
    vals = np.concatenate([line_g, line_g, degree + 1.0])
    a = sp.csc_matrix((vals, (rows, cols)), shape=(n, n))
    lu = splu(a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    return np.ascontiguousarray(np.argsort(lu.perm_c), dtype=np.intp)


def conductance_pattern(
    order: IndexArray, line_from: IndexArray, line_to: IndexArray, line_g: FloatArray
) -> tuple[IndexArray, IndexArray, FloatArray]:
    """Upper triangle of the permuted conductance matrix in CSC, every diagonal stored last."""
    n = order.shape[0]
    position = np.empty(n, dtype=np.intp)
    position[order] = np.arange(n)
    p, q = position[line_from], position[line_to]
    diag = bus_sum(p, line_g, n) + bus_sum(q, line_g, n)
    rows = np.concatenate([np.minimum(p, q), np.arange(n)])
    cols = np.concatenate([np.maximum(p, q), np.arange(n)])
    vals = np.concatenate([-line_g, diag])
    # COO to CSC sums parallel lines and keeps explicit zeros (an isolated bus's diagonal).
    upper = sp.coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsc()
    upper.sum_duplicates()
    upper.sort_indices()
    if upper.nnz != len(np.unique(rows * n + cols)):
        raise AssertionError("conductance pattern lost an entry")
    return (
        np.ascontiguousarray(upper.indptr, dtype=np.intp),
        np.ascontiguousarray(upper.indices, dtype=np.intp),
        np.ascontiguousarray(upper.data, dtype=np.float64),
    )
