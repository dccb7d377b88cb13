"""Builds the compiled core from src_ext/ unless SPARK_NO_EXTENSIONS is set.

All metadata lives in pyproject.toml; this file only declares the extensions.
"""

import os
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).parent
NO_EXTENSIONS = bool(os.environ.get("SPARK_NO_EXTENSIONS"))
# Where each compiled module goes: the channel core, and the Redis receive buffer.
PACKAGE = {"_channels_c": "spark.nodes", "_stream_c": "spark.backends"}


def extensions() -> list[Extension]:
    sources = sorted((HERE / "src_ext").glob("*.pyx"))
    if NO_EXTENSIONS or not sources:
        return []
    from Cython.Build import cythonize

    modules = [
        Extension(f"{PACKAGE[source.stem]}.{source.stem}", [str(source.relative_to(HERE))])
        for source in sources
    ]
    return cythonize(modules, language_level=3)


setup(ext_modules=extensions())
