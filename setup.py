"""Build logic only: compiles cext/*.pyx into edgectl._ext.

Switches (environment):
  SKIP_CYTHON=1           install without the compiled kernels (the NumPy reference runs)
  REQUIRE_CYTHON=1        a failure to cythonize or compile is fatal (CI and packaging)
  EDGECTL_CYTHON_DEBUG=1  bounds and wraparound checks back on, for debugging a kernel
"""

import os

import numpy
from setuptools import Extension, find_packages, setup

# One row per kernel: extension module -> Cython source.
EXTENSIONS = {
    "edgectl._ext.powerflow": "cext/powerflow.pyx",
    "edgectl._ext.dispatch": "cext/dispatch.pyx",
}


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _extensions() -> list[Extension]:
    if _flag("SKIP_CYTHON"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if _flag("REQUIRE_CYTHON"):
            raise
        return []
    debug = _flag("EDGECTL_CYTHON_DEBUG")
    directives = {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": debug,
        "initializedcheck": debug,
        "nonecheck": False,
        "cdivision": True,
        "embedsignature": True,
    }
    modules = [
        Extension(
            name,
            [source],
            include_dirs=[numpy.get_include(), "cext"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=["-O3"] if not debug else ["-O0", "-g"],
        )
        for name, source in EXTENSIONS.items()
    ]
    # Generated C goes under build/, not beside the sources in cext/.
    return list(
        cythonize(
            modules,
            include_path=["cext"],
            compiler_directives=directives,
            build_dir="build/cython",
        )
    )


setup(
    ext_modules=_extensions(),
    package_dir={
        "": ".",
        "edgectl.firmware_configs": "firmware_configs",
        "edgectl.schemas": "schemas",
    },
    packages=[
        *find_packages(include=["edgectl", "edgectl.*"]),
        "edgectl.firmware_configs",
        "edgectl.schemas",
    ],
    package_data={
        "edgectl.firmware_configs": ["**/*.toml", "*.md"],
        "edgectl.sim": ["sites/*.toml"],  # the demo site and its scripted day
        "edgectl.schemas": ["*.json"],
    },
)
