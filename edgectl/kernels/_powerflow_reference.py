"""NumPy/SciPy reference of the Newton power-flow kernel: the fallback and the test oracle.

Same model, same iteration and same status rules as cext/powerflow.pyx, written with
SciPy sparse matrices: each iteration assembles J and factorises it with SuperLU. With
the kernel's elimination order, no pivoting and symmetric mode, SuperLU's U = D L^T, so
diag(U) are the same L D L^T pivots the compiled kernel uses for its collapse margin.
This is also the "SciPy sparse Newton-Raphson" baseline of `edgectl bench`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from edgectl.kernels.powerflow import FloatArray, IndexArray, Status, bus_sum


class ReferenceNewtonSolver:
    """Drop-in for the compiled NewtonSolver (same constructor and solve signature)."""

    def __init__(
        self,
        ap: IndexArray,
        ai: IndexArray,
        gx: FloatArray,
        order: IndexArray,
        line_from: IndexArray,
        line_to: IndexArray,
        line_g: FloatArray,
        droop_bus: IndexArray,
        droop_g: FloatArray,
        droop_v_ref: FloatArray,
        droop_lo: FloatArray,
        droop_hi: FloatArray,
    ) -> None:
        n = order.shape[0]
        upper = sp.csc_matrix((gx, ai, ap), shape=(n, n))
        strict = sp.triu(upper, k=1)
        # Full symmetric G in elimination order, so SuperLU with the natural order
        # eliminates exactly as the compiled kernel does.
        self.g_perm = (upper + strict.T).tocsc()
        self.order = order
        self.line_from, self.line_to, self.line_g = line_from, line_to, line_g
        self.droop_bus, self.droop_g, self.droop_v_ref = droop_bus, droop_g, droop_v_ref
        self.droop_lo, self.droop_hi = droop_lo, droop_hi
        self.position = np.empty(n, dtype=np.intp)
        self.position[order] = np.arange(n)
        self.g_bus = self.g_perm[self.position][:, self.position].tocsr()  # G in bus order
        self.d0 = self._pivots(bus_sum(droop_bus, droop_g, n))
        self.v_out = np.zeros(n)
        self.line_i_out = np.zeros(line_g.shape[0])
        self.droop_i_out = np.zeros(droop_g.shape[0])
        self.droop_saturated_out = np.zeros(droop_g.shape[0], dtype=np.uint8)

    def _droop_current(self, v: FloatArray) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
        raw = self.droop_g * (self.droop_v_ref - v[self.droop_bus])
        linear = (raw > self.droop_lo) & (raw < self.droop_hi)
        return np.clip(raw, self.droop_lo, self.droop_hi), linear

    def _residual(self, v: FloatArray, s: FloatArray) -> FloatArray:
        i_droop, _ = self._droop_current(v)
        n = v.shape[0]
        f: FloatArray = self.g_bus @ v - s / v - bus_sum(self.droop_bus, i_droop, n)
        return f

    def _factor(self, diag_bus: FloatArray) -> tuple[object, FloatArray]:
        """SuperLU of J (elimination order, no pivoting) and its pivots in that order."""
        j = (self.g_perm + sp.diags(diag_bus[self.order])).tocsc()
        lu = splu(j, permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
        return lu, lu.U.diagonal()

    def _pivots(self, diag_bus: FloatArray) -> FloatArray:
        try:
            return self._factor(diag_bus)[1]
        except RuntimeError:  # exactly singular
            return np.zeros(self.order.shape[0])

    def solve(
        self, s: FloatArray, v_start: FloatArray, tol: float, max_iter: int, v_floor: float
    ) -> tuple[int, int, float]:
        n = s.shape[0]
        v = np.array(v_start, dtype=np.float64)
        f = self._residual(v, s)
        norm = float(np.abs(f).max())
        it = 0
        status = Status.MAX_ITER
        unstable = floor_hit = False
        pivots = np.zeros(n)
        while True:
            _, linear = self._droop_current(v)
            diag = s / (v * v) + bus_sum(self.droop_bus, self.droop_g * linear, n)
            try:
                lu, pivots = self._factor(diag)
            except RuntimeError:
                unstable = True
                break
            if np.any(pivots <= 0.0):
                unstable = True
            if norm <= tol:
                status = Status.CONVERGED
                break
            if it >= max_iter:
                break
            dv = np.empty(n)
            dv[self.order] = lu.solve(-f[self.order])  # type: ignore[attr-defined]
            step, halvings = 1.0, 0
            while True:
                v_try = v + step * dv
                if np.all(v_try > v_floor):
                    f_try = self._residual(v_try, s)
                    norm_try = float(np.abs(f_try).max())
                    if norm_try <= (1.0 - 1e-4 * step) * norm:
                        break
                else:
                    floor_hit = True
                halvings += 1
                if halvings > 30:
                    break
                step *= 0.5
            it += 1
            if halvings > 30:
                break
            v, f, norm = v_try, f_try, norm_try

        margin = float((pivots / self.d0).min()) if n else 1.0
        converged = status == Status.CONVERGED
        if (converged and margin <= 0.0) or (not converged and (unstable or floor_hit)):
            status = Status.COLLAPSE
        i_droop, linear = self._droop_current(v)
        self.v_out = v
        self.line_i_out = (v[self.line_from] - v[self.line_to]) * self.line_g
        self.droop_i_out = i_droop
        self.droop_saturated_out = (~linear).astype(np.uint8)
        return it, int(status), margin
