"""Validation rules of the pinned upstream programs, ported so the deploy tests can apply them.

Each rule names the file and version it is ported from; when a pin moves, re-read that file.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# github.com/asaskevich/govalidator at a9d515a09cc2 (the version jaegertracing/jaeger v2.8.0's
# go.mod pins), patterns.go: the URL pattern that the `valid:"url"` tag applies. Go's RE2 spells
# the code-point range \x{00a1}-\x{ffff}; Python's re spells it \u00a1-\uffff.
_IP = (
    r"(([0-9a-fA-F]{1,4}:){7,7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|([0-9a-fA-F]{1,4}:){1,6}:"
    r"[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|([0-9a-fA-F]{1,4}:){1,4}"
    r"(:[0-9a-fA-F]{1,4}){1,3}|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|([0-9a-fA-F]{1,4}:)"
    r"{1,2}(:[0-9a-fA-F]{1,4}){1,5}|[0-9a-fA-F]{1,4}:((:[0-9a-fA-F]{1,4}){1,6})|:((:[0-9a-fA-F]{1,4})"
    r"{1,7}|:)|fe80:(:[0-9a-fA-F]{0,4}){0,4}%[0-9a-zA-Z]{1,}|::(ffff(:0{1,4}){0,1}:){0,1}((25[0-5]|"
    r"(2[0-4]|1{0,1}[0-9]){0,1}[0-9])\.){3,3}(25[0-5]|(2[0-4]|1{0,1}[0-9]){0,1}[0-9])|([0-9a-fA-F]"
    r"{1,4}:){1,4}:((25[0-5]|(2[0-4]|1{0,1}[0-9]){0,1}[0-9])\.){3,3}(25[0-5]|(2[0-4]|1{0,1}[0-9])"
    r"{0,1}[0-9]))"
)
_URL_SCHEMA = r"((ftp|tcp|udp|wss?|https?):\/\/)"
_URL_USERNAME = r"(\S+(:\S*)?@)"
_URL_PATH = r"((\/|\?|#)[^\s]*)"
_URL_PORT = r"(:(\d{1,5}))"
_URL_IP = (
    r"([1-9]\d?|1\d\d|2[01]\d|22[0-3]|24\d|25[0-5])(\.(\d{1,2}|1\d\d|2[0-4]\d|25[0-5])){2}"
    r"(?:\.([0-9]\d?|1\d\d|2[0-4]\d|25[0-5]))"
)
_URL_SUBDOMAIN = r"((www\.)|([a-zA-Z0-9]+([-_\.]?[a-zA-Z0-9])*[a-zA-Z0-9]\.[a-zA-Z0-9]+))"
_WIDE = "a-zA-Z\u00a1-\uffff"
_URL = re.compile(
    "^"
    + _URL_SCHEMA
    + "?"
    + _URL_USERNAME
    + "?"
    + "(("
    + _URL_IP
    + r"|(\["
    + _IP
    + r"\])|(([a-zA-Z0-9]([a-zA-Z0-9-_]+)?[a-zA-Z0-9]([-\.][a-zA-Z0-9]+)*)|("
    + _URL_SUBDOMAIN
    + f"?))?(([{_WIDE}0-9]+-?-?)*[{_WIDE}0-9]+)(?:\\.([{_WIDE}]{{1,}}))?))\\.?"
    + _URL_PORT
    + "?"
    + _URL_PATH
    + "?$"
)
_MAX_URL_RUNES = 2083  # validator.go: maxURLRuneCount
_MIN_URL_RUNES = 3  # validator.go: minURLRuneCount


def govalidator_is_url(value: str) -> bool:
    """govalidator.IsURL (validator.go at a9d515a09cc2), which Jaeger applies to each Cassandra server.

    A bare host name without a dot or a port is not a URL to it: Go's url.Parse puts "cassandra"
    in the path, and a path without a dot is rejected. "cassandra:9042" gets an http:// prefix
    for the parse (host "cassandra:9042") and then matches the pattern.
    """
    if not value or len(value) >= _MAX_URL_RUNES or len(value) <= _MIN_URL_RUNES:
        return False
    if value.startswith("."):
        return False
    parsed = value
    if ":" in value and "://" not in value:
        parsed = "http://" + value
    parts = urlsplit(parsed)
    if parts.netloc.startswith("."):
        return False
    if not parts.netloc and parts.path and "." not in parts.path:
        return False
    return _URL.match(value) is not None
