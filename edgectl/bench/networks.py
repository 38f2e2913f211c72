"""Synthetic DC networks of any size, for benchmarks and tests.

Shape of a real DC site: long radial feeders (rows, busways, PV strings) hanging off a
meshed trunk, with ties that close a feeder onto a neighbour. So the tree here grows by
attaching each bus near the end of the existing numbering (long feeders), and the extra
ties join buses a few positions apart (neighbouring feeders). Ties between random far
buses would make the factor dense in its last block, which no real site does.
Per-unit base as in notes/numerics.md: 800 V, 1 MW; resistances 0.002-0.02 pu; a rack
load on every bus, 5 % of buses with a PV source, 2 % with a droop converter (5 % droop),
loads scaled so that the linearised voltage drop reaches 5 %.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

from edgectl.kernels.powerflow import FloatArray, Topology

V_BASE = 800.0
S_BASE = 1e6
Z_BASE = V_BASE**2 / S_BASE


@dataclass(frozen=True)
class Case:
    """A network and an operating point: bus injections in W (sources +, loads -)."""

    topology: Topology
    s_bus_w: FloatArray
    load_bus: np.ndarray
    load_w: FloatArray
    pv_bus: np.ndarray
    pv_w: FloatArray


def synthetic_case(
    n: int,
    seed: int = 0,
    *,
    mesh: float = 0.1,
    reach: int = 5,
    tie_span: int = 20,
    drop_pu: float = 0.05,
    droop_fraction: float = 0.02,
    headroom: float = 1.5,
) -> Case:
    """A weakly meshed feeder network of n buses loaded to a `drop_pu` linearised drop."""
    rng = np.random.default_rng(seed)
    if n > 1:
        child = np.arange(1, n, dtype=np.intp)
        parent = np.array([rng.integers(max(0, i - reach), i) for i in range(1, n)], dtype=np.intp)
        n_ties = int(mesh * n)
        a = rng.integers(0, n, n_ties)
        b = np.minimum(a + rng.integers(2, tie_span + 1, n_ties), n - 1)
        keep = a != b
        line_from = np.concatenate([child, a[keep]]).astype(np.intp)
        line_to = np.concatenate([parent, b[keep]]).astype(np.intp)
    else:
        line_from = line_to = np.zeros(0, dtype=np.intp)
    line_r = np.asarray(rng.uniform(0.002, 0.02, line_from.shape[0]), dtype=np.float64) * Z_BASE

    n_droop = max(1, round(droop_fraction * n))
    droop_bus = np.sort(rng.choice(n, n_droop, replace=False)).astype(np.intp)
    n_pv = round(0.05 * n)
    pv_bus = np.sort(rng.choice(n, n_pv, replace=False)).astype(np.intp)

    load_w = rng.uniform(0.5, 1.0, n) * S_BASE / n
    pv_w = rng.uniform(0.5, 1.0, n_pv) * load_w.sum() * 0.3 / max(n_pv, 1)
    # Half of the voltage drop in the lines: scale the loads until the linearised drop
    # with stiff converters reaches drop_pu / 2 ...
    if line_r.size:
        g = sp.coo_matrix(
            (
                np.concatenate([1 / line_r, 1 / line_r, -1 / line_r, -1 / line_r]),
                (
                    np.concatenate([line_from, line_to, line_from, line_to]),
                    np.concatenate([line_from, line_to, line_to, line_from]),
                ),
            ),
            shape=(n, n),
        ).tocsc()
        g = g + sp.diags(np.bincount(droop_bus, np.full(n_droop, 1e6), n).astype(float))
        i_load = (load_w - np.bincount(pv_bus, pv_w, n)) / V_BASE
        drop = np.atleast_1d(spsolve(g.tocsc(), i_load))
        scale = 0.5 * drop_pu * V_BASE / max(float(np.abs(drop).max()), 1e-12)
        load_w, pv_w = load_w * scale, pv_w * scale
    # ... and the other half in the droop: each converter rated for its share of the net
    # load (times headroom) and drooping drop_pu / 2 at that share.
    net = max(float(load_w.sum() - pv_w.sum()), 1e-3 * S_BASE)
    i_share = net / n_droop / V_BASE
    i_rated = headroom * i_share
    droop_r = 0.5 * drop_pu * V_BASE / i_share

    topology = Topology(
        v_nominal_v=np.full(n, V_BASE),
        line_from=line_from,
        line_to=line_to,
        line_r_ohm=line_r,
        droop_bus=droop_bus,
        droop_r_ohm=np.full(n_droop, droop_r),
        droop_v_ref_v=np.full(n_droop, V_BASE),
        droop_i_min_a=np.full(n_droop, -i_rated),
        droop_i_max_a=np.full(n_droop, i_rated),
    )
    s_bus = np.bincount(pv_bus, pv_w, n) - load_w
    return Case(topology, s_bus, np.arange(n), load_w, pv_bus, pv_w)
