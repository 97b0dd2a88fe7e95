"""The compiled modules: the shipper's per-line hot path (shipper/_hotpath.c) and a finalize's chunk
events from a compacted object's bytes (aggregator/_chunks.c).

Everything else about the distribution is in pyproject.toml. `optional=True`: where no C compiler
is at hand the wheel is built without them and the programs run their pure-Python paths, which give
the same bytes (tests/shipper/test_hotpath.py, tests/aggregator/test_chunk_events.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(name, [source], optional=True, extra_compile_args=["-O2"])
                   for name, source in (("shipper._hotpath", "shipper/_hotpath.c"),
                                        ("aggregator._chunks", "aggregator/_chunks.c"))])
