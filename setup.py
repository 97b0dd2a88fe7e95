"""The one compiled module: the shipper's per-line hot path (shipper/_hotpath.c).

Everything else about the distribution is in pyproject.toml. `optional=True`: where no C compiler
is at hand the wheel is built without it and the shipper runs its pure-Python path, which gives
the same bytes (tests/shipper/test_hotpath.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("shipper._hotpath", ["shipper/_hotpath.c"], optional=True,
                             extra_compile_args=["-O2"])])
