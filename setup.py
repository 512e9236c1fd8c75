"""Only here because cffi hooks into setuptools through ``cffi_modules``.

Everything else about the distribution lives in pyproject.toml.
"""
from setuptools import setup

setup(cffi_modules=["native/build.py:ffibuilder"])
