"""Build hook for the one optional C extension; all metadata lives in pyproject.toml.

``panoptic._png`` reconstructs PNG scanlines for the PQ evaluator's decoder. It is ``optional``: without a
C compiler the install still succeeds and :mod:`panoptic.png` falls back to Pillow (slower, same results).
"""

import sys

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "panoptic._png", ["panoptic/_png.c"], optional=True,
    extra_compile_args=[] if sys.platform == "win32" else ["-O3"],
)])
