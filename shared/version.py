"""The package's version: the single source (pyproject.toml reads it, see [tool.setuptools.dynamic]).

A constant, not importlib.metadata: that lookup imports ~1.7 MB of modules (zipfile, email, csv, ...)
and scans sys.path for distributions, 50 ms, in every process that reports its version."""

__version__ = "0.1.0"
