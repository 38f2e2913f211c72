# distutils: extra_compile_args = -ffp-contract=off
# No fused multiply-add: the NumPy reference rounds a * b + c twice, and the two
# implementations must switch the same racks when a sum lands on a boundary.
"""Dispatch kernel: one decision per control cycle, O(n) in the racks.

The rules, their units and signs are documented in edgectl/kernels/dispatch.py, which
validates every array before calling `decide` (dtypes, C-contiguity, lengths, tiers in
0..3); nothing here checks them again.
"""

from libc.math cimport INFINITY, isnan
from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memset

cdef enum:
    TIERS = 4
    SCRATCH_BYTES_PER_RACK = 40  # lo (8), shedding keys (16) and order (16); a tier's lo
                                 # and want are gathered over the keys, which are no
                                 # longer needed once a tier shares a shortfall (rule 4)
    BISECTION_ITER = 64  # halvings of [0, f] when Newton ran out of passes

# Tier states while serving (rule 4).
cdef enum:
    FULL = 0   # every rack of the tier gets want
    SHARE = 1  # the tier gets what is left, by an equal fraction of demand
    FLOOR = 2  # nothing left: the tier stays at its floors


cdef inline double dmin(double a, double b) noexcept nogil:
    return a if a < b else b


cdef inline double dmax(double a, double b) noexcept nogil:
    return a if a > b else b


cdef Py_ssize_t* shed_order(Py_ssize_t k, uint64_t* key, Py_ssize_t* idx, uint64_t* key_tmp,
                            Py_ssize_t* idx_tmp) noexcept nogil:
    # LSD radix sort of idx by key, one byte per pass, O(k): stable, so racks that enter
    # in index order leave ties in index order. Returns whichever buffer holds the result.
    cdef:
        Py_ssize_t count[256]
        Py_ssize_t j, d, total, c
        int shift
        uint64_t* ks
        Py_ssize_t* ix
    if k < 2:
        return idx
    for shift in range(0, 64, 8):
        memset(count, 0, sizeof(count))
        for j in range(k):
            count[(key[j] >> shift) & 0xFF] += 1
        if count[(key[0] >> shift) & 0xFF] == k:
            continue  # every key has this byte: nothing to reorder
        total = 0
        for d in range(256):
            c = count[d]
            count[d] = total
            total += c
        for j in range(k):
            d = (key[j] >> shift) & 0xFF
            key_tmp[count[d]] = key[j]
            idx_tmp[count[d]] = idx[j]
            count[d] += 1
        ks = key
        key = key_tmp
        key_tmp = ks
        ix = idx
        idx = idx_tmp
        idx_tmp = ix
    return idx


cdef struct Shedding:
    # One cursor along the shedding order of rules 3 and 4: the racks that are on with a
    # floor, tier 3 first, then 2, 1, 0; within a tier the largest lo first, ties by lower
    # index. Buckets are filled on first use and each tier is sorted when reached.
    bint filled
    int tier                 # the tier being shed
    Py_ssize_t pos           # racks of that tier already shed
    Py_ssize_t* sorted_idx   # that tier's racks in order; NULL until sorted
    Py_ssize_t start[TIERS]  # where each tier's bucket starts in key and order
    Py_ssize_t size[TIERS]


cdef void shedding_fill(Shedding* s, Py_ssize_t n, const signed char* tier,
                        const unsigned char* on, const double* lo, uint64_t* key,
                        Py_ssize_t* order) noexcept nogil:
    # The racks with a floor, bucketed by tier in index order: two passes, O(n).
    cdef:
        Py_ssize_t i, k, total = 0
        Py_ssize_t fill[TIERS]
        int t
        uint64_t bits
    for t in range(TIERS):
        s.size[t] = 0
    for i in range(n):
        if on[i] and lo[i] > 0.0:
            s.size[tier[i]] += 1
    for t in range(TIERS):
        s.start[t] = total
        fill[t] = total
        total += s.size[t]
    for i in range(n):
        if on[i] and lo[i] > 0.0:
            t = tier[i]
            # A positive double's bits rise with its value: complemented, they sort the
            # largest floor first.
            memcpy(&bits, &lo[i], sizeof(double))
            k = fill[t]
            key[k] = ~bits
            order[k] = i
            fill[t] = k + 1
    s.filled = 1
    s.tier = TIERS - 1
    s.pos = 0
    s.sorted_idx = NULL


cdef Py_ssize_t shedding_next(Shedding* s, int above, Py_ssize_t n, uint64_t* key,
                              Py_ssize_t* order) noexcept nogil:
    # The next rack to shed if its tier is above `above`, else -1 without moving.
    cdef Py_ssize_t b
    while s.tier > above:
        if s.sorted_idx == NULL:
            b = s.start[s.tier]
            s.sorted_idx = shed_order(s.size[s.tier], key + b, order + b, key + n + b,
                                      order + n + b)
        if s.pos < s.size[s.tier]:
            s.pos += 1
            return s.sorted_idx[s.pos - 1]
        s.tier -= 1
        s.pos = 0
        s.sorted_idx = NULL
    return -1


cdef double tier_sum(Py_ssize_t k, const double* lo, const double* want, double f,
                     Py_ssize_t* active, double* slope) noexcept nogil:
    # g(f) = sum max(lo_j, f * want_j) over one tier's racks, gathered contiguously; also
    # the left derivative (sum of want_j where f * want_j > lo_j) and how many racks that
    # is. Written without branches: which racks are above their floor is unpredictable.
    cdef:
        Py_ssize_t j, count = 0
        double x, g = 0.0, d = 0.0
        bint above
    for j in range(k):
        x = f * want[j]
        above = x > lo[j]
        g += x if above else lo[j]
        d += want[j] if above else 0.0
        count += above
    active[0] = count
    slope[0] = d
    return g


cdef double equal_fraction(Py_ssize_t k, const double* lo, const double* want, double target,
                           int max_iter) noexcept nogil:
    # Invariant: g(f) >= target for every iterate. g is convex and increasing, so the
    # tangent through (f, g(f)) with the left derivative lies below g and its zero is
    # never left of the root; an unchanged active set means the step was exact.
    cdef:
        int it
        Py_ssize_t count, count_prev = -1
        double f = 1.0, f_next, g, slope, low, high, mid
    for it in range(max_iter):
        g = tier_sum(k, lo, want, f, &count, &slope)
        if g <= target or count == count_prev or slope <= 0.0:
            return f
        f_next = dmax(f - (g - target) / slope, 0.0)
        if not f_next < f:
            return f
        f = f_next
        count_prev = count
    low = 0.0
    high = f
    for it in range(BISECTION_ITER):
        mid = 0.5 * (low + high)
        if tier_sum(k, lo, want, mid, &count, &slope) > target:
            high = mid
        else:
            low = mid
    return high


def decide(
    double period_s,
    double green_share_min,
    double ride_through_s,
    double rack_on_margin,
    double rack_min_off_s,
    double grid_import_max_w,
    double grid_budget_w,
    double fixed_load_w,
    int newton_max_iter,
    const signed char[::1] tier,
    const double[::1] p_min_w,
    const double[::1] p_max_w,
    const double[::1] ramp_w_per_s,
    const double[::1] ren_p_max_w,
    const double[::1] bat_p_max_w,
    const double[::1] bat_p_charge_max_w,
    const double[::1] bat_capacity_wh,
    const double[::1] bat_soc_min,
    const double[::1] bat_soc_max,
    const double[::1] grid_p_max_w,
    const double[::1] ren_available_w,
    const double[::1] soc,
    const double[::1] grid_available_w,
    const double[::1] demand_w,
    const double[::1] cap_prev_w,
    const unsigned char[::1] on_prev,
    const double[::1] off_s,
    double[::1] cap_w,
    unsigned char[::1] on,
    double[::1] ren_p_w,
    double[::1] ren_curtailed_w,
    double[::1] bat_p_w,
    double[::1] grid_p_w,
    double[::1] by_tier,
    unsigned char[::1] scratch,
):
    """Fill the outputs; return (supply_w, served_w, shed, started).

    scratch is SCRATCH_BYTES_PER_RACK bytes per rack of working memory, owned by the
    caller so that it can be reused from cycle to cycle.
    """
    cdef:
        Py_ssize_t n = tier.shape[0]
        Py_ssize_t m = ren_p_max_w.shape[0]
        Py_ssize_t nb = bat_p_max_w.shape[0]
        Py_ssize_t ng = grid_p_max_w.shape[0]
        Py_ssize_t i, k, t, size
        Py_ssize_t shed = 0, started = 0, n_off = 0
        double a, x, step, lo_i, hi_i, c0
        double r_w = 0.0, d_w = 0.0, c_w = 0.0, g_sum = 0.0, grid_limit, budget, supply
        double floors = 0.0, spare, need = 0.0
        double used_r, rest, used_d, used_g, charged, fraction, ratio
        double extra[TIERS]
        double tier_lo[TIERS]
        double share[TIERS]
        int state[TIERS]
        int dirty[TIERS]
        Py_ssize_t n_on[TIERS]
        bint mine
        Shedding shedding
        double* lo = NULL
        uint64_t* key = NULL
        Py_ssize_t* order = NULL
        double* gathered = NULL

    if scratch.shape[0] < SCRATCH_BYTES_PER_RACK * n:
        raise ValueError(f"scratch: expected at least {SCRATCH_BYTES_PER_RACK * n} bytes")
    if n > 0:
        # Carved at multiples of 8 n bytes from an 8-byte aligned numpy buffer.
        lo = <double*>&scratch[0]
        key = <uint64_t*>&scratch[8 * n]
        order = <Py_ssize_t*>&scratch[24 * n]
        gathered = <double*>&scratch[8 * n]

    with nogil:
        # Rule 1, supply stack. Outputs hold intermediate limits until rule 6 rewrites them.
        for k in range(m):
            a = dmin(dmax(ren_available_w[k], 0.0), ren_p_max_w[k])
            ren_curtailed_w[k] = a
            r_w += a
        for k in range(nb):
            x = bat_soc_min[k] + bat_p_max_w[k] * ride_through_s / 3600.0 / bat_capacity_wh[k]
            x = dmax(soc[k] - x, 0.0)
            x = dmin(bat_p_max_w[k], x * bat_capacity_wh[k] * 3600.0 / period_s)
            bat_p_w[k] = x
            d_w += x
        for k in range(nb):
            x = dmax(bat_soc_max[k] - soc[k], 0.0)
            c_w += dmin(bat_p_charge_max_w[k], x * bat_capacity_wh[k] * 3600.0 / period_s)
        for k in range(ng):
            a = dmin(dmax(grid_available_w[k], 0.0), grid_p_max_w[k])
            grid_p_w[k] = a
            g_sum += a
        if isnan(grid_budget_w):
            if green_share_min <= 0.0:
                budget = INFINITY
            elif green_share_min >= 1.0:
                budget = 0.0
            else:
                budget = (1.0 - green_share_min) / green_share_min * (r_w + d_w)
        else:
            budget = dmax(grid_budget_w, 0.0)
        grid_limit = dmin(dmin(g_sum, grid_import_max_w), budget)
        # The fixed load comes first out of the stack; S < 0 sheds every rack with a floor.
        supply = r_w + d_w + grid_limit - fixed_load_w

        # Rule 2, bounds: lo in scratch, want in cap_w, tier demand in by_tier[0:4].
        for t in range(TIERS):
            by_tier[t] = 0.0
        for i in range(n):
            by_tier[tier[i]] += demand_w[i]
            if on_prev[i]:
                on[i] = 1
                step = ramp_w_per_s[i] * period_s
                lo_i = dmin(p_max_w[i], dmax(p_min_w[i], cap_prev_w[i] - step))
                hi_i = dmin(p_max_w[i], cap_prev_w[i] + step)
                lo[i] = lo_i
                cap_w[i] = dmax(lo_i, dmin(hi_i, demand_w[i]))
                floors += lo_i
            else:
                on[i] = 0
                lo[i] = 0.0
                cap_w[i] = 0.0
                n_off += 1

        # Rule 3, shedding along the cursor's order until the floors fit.
        shedding.filled = 0
        if floors > supply:
            shedding_fill(&shedding, n, &tier[0], &on[0], lo, key, order)
            while floors > supply:
                i = shedding_next(&shedding, -1, n, key, order)
                if i < 0:
                    break
                on[i] = 0
                cap_w[i] = 0.0
                floors -= lo[i]
                shed += 1

        # Rule 4, serving by tier. Invariant from here on: floors + the sum of (cap - lo)
        # handed out so far + spare == supply, with spare >= 0; a rack shed here moves
        # its lo from the floors to spare.
        for t in range(TIERS):
            extra[t] = 0.0
            tier_lo[t] = 0.0
            n_on[t] = 0
            dirty[t] = 0
        for i in range(n):
            if on[i]:
                extra[tier[i]] += cap_w[i] - lo[i]
                tier_lo[tier[i]] += lo[i]
                n_on[tier[i]] += 1
        spare = supply - floors
        for t in range(TIERS):
            if dirty[t]:
                # Racks of this tier went off for an earlier tier: the same sums, in the
                # same index order, over the racks left (none left: both are 0). Adding
                # 0.0 for the others changes no sum and spares a branch the shedding made
                # unpredictable.
                extra[t] = 0.0
                tier_lo[t] = 0.0
                if n_on[t] > 0:
                    for i in range(n):
                        mine = on[i] != 0 and tier[i] == t
                        extra[t] += (cap_w[i] - lo[i]) if mine else 0.0
                        tier_lo[t] += lo[i] if mine else 0.0
            if extra[t] > spare and t < TIERS - 1:
                # Racks of later tiers go off, in the order of rule 3, until this tier fits.
                if not shedding.filled:
                    shedding_fill(&shedding, n, &tier[0], &on[0], lo, key, order)
                while extra[t] > spare:
                    i = shedding_next(&shedding, t, n, key, order)
                    if i < 0:
                        break
                    on[i] = 0
                    cap_w[i] = 0.0
                    spare += lo[i]
                    dirty[tier[i]] = 1
                    n_on[tier[i]] -= 1
                    shed += 1
            share[t] = 1.0
            if extra[t] <= spare:
                state[t] = FULL
                spare -= extra[t]
            elif spare <= 0.0:
                state[t] = FLOOR
                share[t] = 0.0
            else:
                # Only one tier per cycle gets here: spare is 0 afterwards, and every later
                # tier's racks with a floor are off, so the cursor's keys (overwritten by
                # the gathering) are not needed again.
                state[t] = SHARE
                size = 0
                for i in range(n):
                    # Written for every rack, kept for the tier's: size <= i < n.
                    gathered[size] = lo[i]
                    gathered[n + size] = cap_w[i]
                    size += on[i] != 0 and tier[i] == t
                share[t] = equal_fraction(size, gathered, gathered + n, tier_lo[t] + spare,
                                          newton_max_iter)
                spare = 0.0
        if state[0] != FULL or state[1] != FULL or state[2] != FULL or state[3] != FULL:
            # max(lo, f * want) is want itself for f = 1 (FULL) and lo for f = 0 (FLOOR),
            # so one branch-free formula serves every tier.
            for i in range(n):
                x = dmax(lo[i], share[tier[i]] * cap_w[i])
                cap_w[i] = x if on[i] else 0.0

        # Rule 5, starting racks that were off before this cycle (on_prev == 0, so never a
        # rack shed above): tier order, then index order.
        if spare > 0.0 and n_off > 0:
            for t in range(TIERS):
                for i in range(n):
                    if on_prev[i] or tier[i] != t:
                        continue
                    if not (off_s[i] >= rack_min_off_s and demand_w[i] > 0.0):
                        continue
                    c0 = p_min_w[i]
                    if not c0 > 0.0:
                        c0 = dmin(dmin(demand_w[i], p_max_w[i]), ramp_w_per_s[i] * period_s)
                    if c0 > 0.0 and spare >= (1.0 + rack_on_margin) * c0:
                        on[i] = 1
                        cap_w[i] = c0
                        spare -= c0
                        started += 1

        # Rule 7, served power per tier; need is the sum of the caps, then the fixed load,
        # added last as in the reference.
        for t in range(TIERS):
            by_tier[TIERS + t] = 0.0
        for i in range(n):
            need += cap_w[i]
            by_tier[TIERS + tier[i]] += dmin(demand_w[i], cap_w[i]) if on[i] else 0.0
        need += fixed_load_w
        for t in range(TIERS):
            by_tier[2 * TIERS + t] = dmax(by_tier[t] - by_tier[TIERS + t], 0.0)

        # Rule 6, use of supply: renewables, batteries, grid; surplus charges, then curtails.
        # When S < 0 each source gives its limit and the rest of the fixed load goes unmet.
        used_r = dmin(need, r_w)
        rest = need - used_r
        used_d = dmin(rest, d_w)
        used_g = dmin(dmax(rest - used_d, 0.0), grid_limit)
        charged = dmin(r_w - used_r, c_w)
        fraction = dmin((used_r + charged) / r_w, 1.0) if r_w > 0.0 else 0.0
        for k in range(m):
            a = ren_curtailed_w[k]
            ren_p_w[k] = a * fraction
            ren_curtailed_w[k] = a - ren_p_w[k]
        if used_d > 0.0:
            ratio = used_d / d_w
            for k in range(nb):
                bat_p_w[k] = bat_p_w[k] * ratio
        elif charged > 0.0:
            ratio = charged / c_w
            for k in range(nb):
                x = dmax(bat_soc_max[k] - soc[k], 0.0)
                x = dmin(bat_p_charge_max_w[k], x * bat_capacity_wh[k] * 3600.0 / period_s)
                bat_p_w[k] = -(x * ratio)
        else:
            for k in range(nb):
                bat_p_w[k] = 0.0
        if used_g > 0.0:
            ratio = used_g / g_sum
            for k in range(ng):
                grid_p_w[k] = grid_p_w[k] * ratio
        else:
            for k in range(ng):
                grid_p_w[k] = 0.0

    served = by_tier[TIERS] + by_tier[TIERS + 1] + by_tier[TIERS + 2] + by_tier[TIERS + 3]
    return supply, served, shed, started
