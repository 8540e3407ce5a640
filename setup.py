"""Maps the repository folders onto the ``medtransfer`` import name.

``shared/`` becomes ``medtransfer.shared`` and ``apps/`` becomes ``medtransfer.apps``; nothing is
installed under a bare ``shared`` or ``apps`` name.  Metadata lives in pyproject.toml.
"""
from setuptools import find_packages, setup

ROOTS = {"medtransfer.shared": "shared", "medtransfer.apps": "apps"}
packages = []
for name, folder in ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(where=folder)]

setup(packages=packages, package_dir=ROOTS, package_data={"": ["*.yaml", "*.json", "*.md"]})
