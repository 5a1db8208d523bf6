"""Tile servers for the web page's map (``g3 serve --map-tiles URL_TEMPLATE``).

The page draws its map with Leaflet from the Natural Earth outlines shipped with g3, offline. With a tile URL
template (``https://tile.example/{z}/{x}/{y}.png``, Leaflet's syntax) the page lays that server's tiles on top,
so a user can zoom to street level around a candidate. The template is checked here, once, when the server
starts; its origin is the only one the page's content-security policy then lets images come from.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

#: Placeholders of a Leaflet tile URL that the page fills in: zoom, column, row (``{-y}``: TMS rows),
#: subdomain (``{s}``, as the leftmost host label only, so that the CSP can name it as ``*.``) and ``{r}``
#: (``@2x`` on high-density screens).
PLACEHOLDERS = frozenset({"z", "x", "y", "-y", "s", "r"})
_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")
_IPV6 = re.compile(r"[0-9a-f:.]+")


def tile_origin(template: str) -> str:
    """The content-security-policy source of the tile URL ``template`` (``https://*.tile.example`` for
    ``https://{s}.tile.example/{z}/{x}/{y}.png``). Raises ValueError naming what is wrong with it."""
    shown = f"--map-tiles {template[:200]!r}"
    names = set(re.findall(r"\{([^{}]*)\}", template))
    if names - PLACEHOLDERS:
        unknown = ", ".join("{" + n + "}" for n in sorted(names - PLACEHOLDERS))
        raise ValueError(f"{shown} has unknown placeholders {unknown}; use {{z}}, {{x}}, {{y}} (or {{-y}}), "
                         "optionally {s} and {r}")  # fmt: skip
    if not {"z", "x"} <= names or not names & {"y", "-y"}:
        raise ValueError(
            f"{shown} needs the placeholders {{z}}, {{x}} and {{y}}, e.g. https://tile.example/{{z}}/{{x}}/{{y}}.png"
        )
    if any(c.isspace() or ord(c) < 32 for c in template):
        raise ValueError(f"{shown} contains a space or a control character; percent-encode it")
    parts = urlsplit(template)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{shown} must start with http:// or https://")
    if "@" in parts.netloc:
        raise ValueError(f"{shown} contains credentials (user:password@); tile URLs are visible to every visitor")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{shown} has an invalid port ({exc})") from exc
    host = parts.hostname or ""
    if ":" in host:
        if not _IPV6.fullmatch(host):
            raise ValueError(f"{shown} has an invalid IPv6 host {host!r}")
        source = f"[{host}]"
    else:
        wildcard = host.startswith("{s}.")
        rest = host[4:] if wildcard else host
        if not _HOST.fullmatch(rest):
            raise ValueError(f"{shown} has no valid host name (a {{s}} subdomain must be the whole leftmost label, "
                             "as in https://{s}.tile.example/…)")  # fmt: skip
        source = ("*." if wildcard else "") + rest
    return f"{parts.scheme}://{source}" + (f":{port}" if port is not None else "")
