"""Sphinx configuration: furo theme, Markdown pages (MyST), each plugin's module docstring as its guide."""

from __future__ import annotations

project = "otel-rabbitmq"
author = "otel-rabbitmq contributors"
copyright = "2026, otel-rabbitmq contributors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
exclude_patterns = ["_build"]

html_theme = "furo"
html_title = "otel-rabbitmq"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": False}
# Type hints name OpenTelemetry and client-library classes whose docs are not part of this build.
nitpicky = False
