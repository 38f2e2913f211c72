# Header-only shared declarations for the kernels: ctypedefs and inline helpers.
# Keep it header-only: a cdef function defined in one flat cext/*.pyx and cimported by
# another fails at import time (see cext/README.md).

ctypedef Py_ssize_t idx_t  # indices: numpy.intp on the Python side


cdef inline double clip(double x, double lo, double hi) noexcept nogil:
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x
