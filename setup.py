"""Build hook for the optional C extensions; all metadata lives in pyproject.toml.

* ``panoptic._png`` reconstructs PNG scanlines for the PQ evaluator's decoder (:mod:`panoptic.png`);
* ``panoptic.fusion._kernels`` runs the fusions' per-pixel passes over CPU logits;
* ``panoptic.evaluation._native`` counts (GT, prediction) pixel pairs and finds Boundary PQ's bands.

All are ``optional``: without a C compiler the install still succeeds and the pure Python / torch paths
are used (slower, same results).
"""

import sys

from setuptools import Extension, setup

FLAGS = [] if sys.platform == "win32" else ["-O3"]

setup(ext_modules=[
    Extension("panoptic._png", ["panoptic/_png.c"], optional=True, extra_compile_args=FLAGS),
    Extension("panoptic.fusion._kernels", ["panoptic/fusion/_kernels.c"], optional=True, extra_compile_args=FLAGS),
    Extension("panoptic.evaluation._native", ["panoptic/evaluation/_native.c"], optional=True,
              extra_compile_args=FLAGS),
])
