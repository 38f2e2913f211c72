# DC power flow: sparse Newton-Raphson in current-mismatch form.
#
# The unknowns are the bus voltages V. Net current injected at bus k must leave through
# the lines (Kirchhoff):
#
#     F_k(V) = (G V)_k - s_k / V_k - sum_{droop j at k} clip(g_j (vref_j - V_k), lo_j, hi_j) = 0
#
# with G the line conductance Laplacian and s_k the constant-power injection (W, sources
# positive, racks negative). The Jacobian J = G + diag(s / V^2) + diag(g_j, unsaturated j)
# is symmetric with G's pattern, so it is factorised as L D L^T over a pattern that is fixed
# per topology: the fill-reducing order and the symbolic analysis (elimination tree, column
# counts) are computed once in __init__; each Newton iteration only refactorises numerically.
# J loses positive definiteness exactly at the voltage-collapse nose, so the pivots D double
# as the collapse indicator.

from libc.math cimport fabs, INFINITY

import numpy as np

from _types cimport idx_t, clip

# Status codes, mirrored in edgectl/kernels/powerflow.py.
cdef enum:
    ST_CONVERGED = 0
    ST_MAX_ITER = 1
    ST_COLLAPSE = 2


cdef class NewtonSolver:
    """Sparse L D L^T Newton solver for one network topology (see the module comment)."""

    cdef readonly idx_t n, n_line, n_droop, lnz_total
    # Upper triangle of the permuted matrix in CSC, diagonal last in each column.
    cdef idx_t[::1] Ap, Ai
    cdef double[::1] Gx
    cdef idx_t[::1] order, position  # order[k] = bus at position k; position[bus] = k
    cdef idx_t[::1] line_from, line_to  # positions
    cdef double[::1] line_g
    cdef idx_t[::1] droop_at  # position of each droop source's bus
    cdef double[::1] droop_g, droop_vref, droop_lo, droop_hi
    # Factor storage and work arrays.
    cdef idx_t[::1] Lp, Li, parent, lnz, flag, pattern
    cdef double[::1] Lx, D, D0, Y, Ax
    cdef double[::1] v, f, dv, v_try, f_try, s, diag_add
    # Results in bus / line / source order, read by the Python face after each solve.
    cdef readonly object v_out, line_i_out, droop_i_out, droop_saturated_out
    cdef double[::1] v_out_mv, line_i_mv, droop_i_mv
    cdef unsigned char[::1] droop_sat_mv

    def __init__(self, idx_t[::1] Ap, idx_t[::1] Ai, double[::1] Gx, idx_t[::1] order,
                 idx_t[::1] line_from, idx_t[::1] line_to, double[::1] line_g,
                 idx_t[::1] droop_bus, double[::1] droop_g, double[::1] droop_vref,
                 double[::1] droop_lo, double[::1] droop_hi):
        cdef idx_t k, n = order.shape[0]
        self.n = n
        self.n_line = line_g.shape[0]
        self.n_droop = droop_g.shape[0]
        self.Ap, self.Ai, self.Gx, self.order = Ap, Ai, Gx, order
        self.position = np.empty(n, dtype=np.intp)
        for k in range(n):
            self.position[order[k]] = k
        self.line_from = np.asarray(self.position)[np.asarray(line_from)]
        self.line_to = np.asarray(self.position)[np.asarray(line_to)]
        self.line_g = line_g
        self.droop_at = np.asarray(self.position)[np.asarray(droop_bus)]
        self.droop_g, self.droop_vref = droop_g, droop_vref
        self.droop_lo, self.droop_hi = droop_lo, droop_hi

        self.parent = np.empty(n, dtype=np.intp)
        self.lnz = np.empty(n, dtype=np.intp)
        self.flag = np.empty(n, dtype=np.intp)
        self.pattern = np.empty(n, dtype=np.intp)
        self.Lp = np.empty(n + 1, dtype=np.intp)
        with nogil:
            self._symbolic()
        self.lnz_total = self.Lp[n]
        self.Li = np.empty(max(self.lnz_total, 1), dtype=np.intp)
        self.Lx = np.empty(max(self.lnz_total, 1), dtype=np.float64)
        self.D = np.empty(n, dtype=np.float64)
        self.D0 = np.empty(n, dtype=np.float64)
        self.Y = np.zeros(n, dtype=np.float64)
        self.Ax = np.empty(Gx.shape[0], dtype=np.float64)
        self.v = np.zeros(n, dtype=np.float64)
        self.f = np.zeros(n, dtype=np.float64)
        self.dv = np.zeros(n, dtype=np.float64)
        self.v_try = np.zeros(n, dtype=np.float64)
        self.f_try = np.zeros(n, dtype=np.float64)
        self.s = np.zeros(n, dtype=np.float64)
        self.diag_add = np.zeros(n, dtype=np.float64)
        self.v_out = np.zeros(n, dtype=np.float64)
        self.line_i_out = np.zeros(self.n_line, dtype=np.float64)
        self.droop_i_out = np.zeros(self.n_droop, dtype=np.float64)
        self.droop_saturated_out = np.zeros(self.n_droop, dtype=np.uint8)
        self.v_out_mv = self.v_out
        self.line_i_mv = self.line_i_out
        self.droop_i_mv = self.droop_i_out
        self.droop_sat_mv = self.droop_saturated_out

        # Reference pivots: the network with every droop converter in its linear range and
        # no constant-power device. The collapse margin compares the operating pivots to these.
        with nogil:
            for k in range(n):
                self.diag_add[k] = 0.0
            for k in range(self.n_droop):
                self.diag_add[self.droop_at[k]] += self.droop_g[k]
            self._assemble()
            self._factor()
            for k in range(n):
                self.D0[k] = self.D[k]

    def __setattr__(self, name, value):
        if name == "v":
            self.v = value
        elif name == "f":
            self.f = value
        elif name == "dv":
            self.dv = value
        elif name == "v_try":
            self.v_try = value
        elif name == "f_try":
            self.f_try = value
        elif name == "s":
            self.s = value
        elif name == "diag_add":
            self.diag_add = value
        else:
            raise AttributeError(name)

    def solve(self, const double[::1] s_bus, const double[::1] v_start, double tol,
              int max_iter, double v_floor):
        """Newton iterations from v_start (bus order); returns (iterations, status, margin).

        margin = min_k D_k / D0_k at the final iterate: 1 for an unloaded network, falling
        to 0 at the voltage-collapse nose, negative beyond it.
        """
        cdef idx_t k, b, j
        cdef int it = 0, status = ST_MAX_ITER, halvings
        cdef double norm, norm_try, step, margin, ratio, i_d
        cdef bint positive, unstable = False, floor_hit = False
        with nogil:
            for k in range(self.n):
                b = self.order[k]
                self.s[k] = s_bus[b]
                self.v[k] = v_start[b]
            norm = self._residual(self.v, self.f)
            while True:
                self._jacobian_diagonal(self.v)
                self._assemble()
                if self._factor() < self.n:
                    unstable = True  # exactly singular: at the nose, or nothing holds the bus
                    break
                for k in range(self.n):
                    if self.D[k] <= 0.0:
                        unstable = True
                if norm <= tol:
                    status = ST_CONVERGED
                    break
                if it >= max_iter:
                    status = ST_MAX_ITER
                    break
                self._solve_factored()  # dv = -J^-1 f
                # Backtracking keeps Newton from jumping past the nose or below zero volts.
                step = 1.0
                halvings = 0
                while True:
                    positive = True
                    for k in range(self.n):
                        self.v_try[k] = self.v[k] + step * self.dv[k]
                        if self.v_try[k] <= v_floor:
                            positive = False
                            floor_hit = True
                    if positive:
                        norm_try = self._residual(self.v_try, self.f_try)
                        if norm_try <= (1.0 - 1e-4 * step) * norm:
                            break
                    halvings += 1
                    if halvings > 30:
                        break
                    step *= 0.5
                it += 1
                if halvings > 30:
                    break
                for k in range(self.n):
                    self.v[k] = self.v_try[k]
                    self.f[k] = self.f_try[k]
                norm = norm_try

            margin = INFINITY
            for k in range(self.n):
                ratio = self.D[k] / self.D0[k]
                if ratio < margin:
                    margin = ratio
            if self.n == 0:
                margin = 1.0
            # A solution on the far side of the nose (J not positive definite) is the
            # unstable low-voltage branch: constant-power loads cannot operate there.
            if status == ST_CONVERGED and margin <= 0.0:
                status = ST_COLLAPSE
            elif status != ST_CONVERGED and (unstable or floor_hit):
                status = ST_COLLAPSE
            self._publish()
        return it, status, margin

    cdef void _publish(self) noexcept nogil:
        cdef idx_t k, j, b
        cdef double i_d
        for k in range(self.n):
            self.v_out_mv[self.order[k]] = self.v[k]
        for k in range(self.n_line):
            self.line_i_mv[k] = (self.v[self.line_from[k]] - self.v[self.line_to[k]]) * self.line_g[k]
        for j in range(self.n_droop):
            b = self.droop_at[j]
            i_d = self.droop_g[j] * (self.droop_vref[j] - self.v[b])
            self.droop_sat_mv[j] = i_d <= self.droop_lo[j] or i_d >= self.droop_hi[j]
            self.droop_i_mv[j] = clip(i_d, self.droop_lo[j], self.droop_hi[j])

    cdef double _residual(self, double[::1] v, double[::1] f) noexcept nogil:
        """f = G v - s / v - I_droop(v); returns max |f|."""
        cdef idx_t k, p, i, last, b
        cdef double a, norm = 0.0
        for k in range(self.n):
            f[k] = 0.0
        for k in range(self.n):
            last = self.Ap[k + 1] - 1
            for p in range(self.Ap[k], last):
                i = self.Ai[p]
                a = self.Gx[p]
                f[i] += a * v[k]
                f[k] += a * v[i]
            f[k] += self.Gx[last] * v[k] - self.s[k] / v[k]
        for k in range(self.n_droop):
            b = self.droop_at[k]
            f[b] -= clip(self.droop_g[k] * (self.droop_vref[k] - v[b]),
                         self.droop_lo[k], self.droop_hi[k])
        for k in range(self.n):
            if fabs(f[k]) > norm:
                norm = fabs(f[k])
        return norm

    cdef void _jacobian_diagonal(self, double[::1] v) noexcept nogil:
        """Diagonal terms of J beyond G: s/V^2, and g of each droop converter not at its limit."""
        cdef idx_t k, b
        cdef double i_d
        for k in range(self.n):
            self.diag_add[k] = self.s[k] / (v[k] * v[k])
        for k in range(self.n_droop):
            b = self.droop_at[k]
            i_d = self.droop_g[k] * (self.droop_vref[k] - v[b])
            if self.droop_lo[k] < i_d < self.droop_hi[k]:
                self.diag_add[b] += self.droop_g[k]

    cdef void _assemble(self) noexcept nogil:
        cdef idx_t k, p
        for p in range(self.Gx.shape[0]):
            self.Ax[p] = self.Gx[p]
        for k in range(self.n):
            self.Ax[self.Ap[k + 1] - 1] += self.diag_add[k]

    cdef void _symbolic(self) noexcept nogil:
        """Elimination tree and column counts of L (up-looking, row subtrees)."""
        cdef idx_t k, p, i
        for k in range(self.n):
            self.parent[k] = -1
            self.flag[k] = k
            self.lnz[k] = 0
            for p in range(self.Ap[k], self.Ap[k + 1]):
                i = self.Ai[p]
                # Walk from i up the tree until a node already visited for row k.
                while i < k and self.flag[i] != k:
                    if self.parent[i] == -1:
                        self.parent[i] = k
                    self.lnz[i] += 1
                    self.flag[i] = k
                    i = self.parent[i]
        self.Lp[0] = 0
        for k in range(self.n):
            self.Lp[k + 1] = self.Lp[k] + self.lnz[k]

    cdef idx_t _factor(self) noexcept nogil:
        """Numeric L D L^T of Ax (up-looking); returns n, or the column of a zero pivot."""
        cdef idx_t k, p, p2, i, top, length, n = self.n
        cdef double yi, l_ki
        for k in range(n):
            # Row k of L is the reach of column k's upper entries in the elimination tree.
            self.Y[k] = 0.0
            top = n
            self.flag[k] = k
            self.lnz[k] = 0
            for p in range(self.Ap[k], self.Ap[k + 1]):
                i = self.Ai[p]
                self.Y[i] += self.Ax[p]
                length = 0
                while self.flag[i] != k:
                    self.pattern[length] = i
                    length += 1
                    self.flag[i] = k
                    i = self.parent[i]
                while length > 0:
                    top -= 1
                    length -= 1
                    self.pattern[top] = self.pattern[length]
            self.D[k] = self.Y[k]
            self.Y[k] = 0.0
            while top < n:
                i = self.pattern[top]
                top += 1
                yi = self.Y[i]
                self.Y[i] = 0.0
                p2 = self.Lp[i] + self.lnz[i]
                for p in range(self.Lp[i], p2):
                    self.Y[self.Li[p]] -= self.Lx[p] * yi
                l_ki = yi / self.D[i]
                self.D[k] -= l_ki * yi
                self.Li[p2] = k
                self.Lx[p2] = l_ki
                self.lnz[i] += 1
            if self.D[k] == 0.0:
                return k
        return n

    cdef void _solve_factored(self) noexcept nogil:
        """dv = -(L D L^T)^-1 f."""
        cdef idx_t k, p
        cdef double x
        for k in range(self.n):
            self.dv[k] = -self.f[k]
        for k in range(self.n):
            x = self.dv[k]
            for p in range(self.Lp[k], self.Lp[k + 1]):
                self.dv[self.Li[p]] -= self.Lx[p] * x
        for k in range(self.n):
            self.dv[k] /= self.D[k]
        for k in range(self.n - 1, -1, -1):
            x = self.dv[k]
            for p in range(self.Lp[k], self.Lp[k + 1]):
                x -= self.Lx[p] * self.dv[self.Li[p]]
            self.dv[k] = x
