"""Build of the compiled core, `autoskill_fast._core` (pybind11 over scipy-openblas32's OpenBLAS + LAPACK).

Everything else (name, version, dependencies, packages) lives in pyproject.toml. Works with `pip install .` and
`pip install -e .`, with or without `--no-build-isolation`; for development, `python setup.py build_ext --inplace`.

Finding the library at run time: pip may build in an isolated environment that is deleted afterwards, so no
build-time path can be trusted. The extension links `libscipy_openblas.so` by its SONAME, with an rpath to the
scipy_openblas32 package next to an installed autoskill_fast (`$ORIGIN/../scipy_openblas32/lib`) and, unless pip's
temporary build environment provided it, to the build-time copy. Above all, autoskill_fast/linalg.py imports
`scipy_openblas32` (which loads the library RTLD_GLOBAL) before `_core`, so the loader reuses the already-loaded
library wherever it lives; scipy-openblas32 is therefore a runtime dependency too.
"""

import glob
import sys

import scipy_openblas32
from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

if sys.platform.startswith("linux"):
    origin = "$ORIGIN"
elif sys.platform == "darwin":
    origin = "@loader_path"
else:
    origin = None

rpaths = [] if "pip-build-env" in scipy_openblas32.get_lib_dir() else [scipy_openblas32.get_lib_dir()]  # temporary
if origin:
    rpaths.insert(0, f"{origin}/../scipy_openblas32/lib")

core = Pybind11Extension(
    "autoskill_fast._core",
    sources=sorted(glob.glob("csrc/*.cpp")),
    depends=sorted(glob.glob("csrc/*.h")),
    include_dirs=["csrc", scipy_openblas32.get_include_dir()],
    library_dirs=[scipy_openblas32.get_lib_dir()],
    libraries=[scipy_openblas32.get_library()],
    extra_link_args=[f"-Wl,-rpath,{path}" for path in rpaths] if sys.platform != "win32" else [],
    # No -march: the wheel must run on any x86-64; OpenBLAS picks its kernels for the CPU at run time, and the
    # few loops compiled here are memory-bound.
    extra_compile_args=["-O3"] if sys.platform != "win32" else ["/O2"],
    cxx_std=17,
)

setup(ext_modules=[core], cmdclass={"build_ext": build_ext})
