"""Build hook for the optional C extensions; all metadata lives in pyproject.toml.

* ``panoptic._png`` reconstructs PNG scanlines for the PQ evaluator's decoder (:mod:`panoptic.png`);
* ``panoptic.fusion._kernels`` runs the fusions' per-pixel passes over CPU logits and the query fusions' bilinear
  resize;
* ``panoptic.evaluation._native`` counts (GT, prediction) pixel pairs and finds Boundary PQ's bands.

All are ``optional``: without a C compiler the install still succeeds and the pure Python / torch paths
are used (slower, same results).
"""

import sys

from setuptools import Extension, setup

FLAGS = [] if sys.platform == "win32" else ["-O3"]
# The fusion kernels reproduce torch's float arithmetic bit for bit: no contraction into FMAs other than the
# explicit fmaf calls (see panoptic/fusion/_bilinear.c).
KERNEL_FLAGS = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off"]
LIBM = [] if sys.platform == "win32" else ["m"]

setup(ext_modules=[
    Extension("panoptic._png", ["panoptic/_png.c"], optional=True, extra_compile_args=FLAGS),
    Extension("panoptic.fusion._kernels", ["panoptic/fusion/_kernels.c", "panoptic/fusion/_bilinear.c"],
              depends=["panoptic/fusion/_kernels.h"], optional=True, extra_compile_args=KERNEL_FLAGS,
              libraries=LIBM),
    Extension("panoptic.evaluation._native", ["panoptic/evaluation/_native.c"], optional=True,
              extra_compile_args=FLAGS),
])
