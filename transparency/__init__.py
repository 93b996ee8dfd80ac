"""The clients' own test suites, run without and with our instrumentation (``nox -s transparency``).

See README.md in this directory.
"""
