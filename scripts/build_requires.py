"""Print the build requirements pyproject.toml declares ([build-system] requires), one per line.

The Makefile installs exactly these before its --no-build-isolation install, so a virtual
environment's own bundled setuptools (older than the one pyproject needs) never builds the package.
"""
import os
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the TOML reader pip vendors
    from pip._vendor import tomli as tomllib

path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "pyproject.toml")
with open(path, "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))
