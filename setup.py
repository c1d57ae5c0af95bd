"""Packaging: the product's folders at the repository top install under one namespace.

``trtq/`` -> ``trtq`` (with ``trtq.core``, ``trtq.pipeline``, the CLI), and ``calibration/``,
``quantize/``, ``deploy/``, ``models/`` -> ``trtq.calibration``, ``trtq.quantize``,
``trtq.deploy``, ``trtq.models``. Subpackages are found, not listed. Everything else about
the project is in pyproject.toml.
"""

from setuptools import find_packages, setup

FOLDERS = {
    "trtq": "trtq",
    "trtq.calibration": "calibration",
    "trtq.quantize": "quantize",
    "trtq.deploy": "deploy",
    "trtq.models": "models",
}

packages = [sub for name, folder in FOLDERS.items()
            for sub in (name, *(f"{name}.{p}" for p in find_packages(folder)))]

setup(package_dir=FOLDERS, packages=packages)
