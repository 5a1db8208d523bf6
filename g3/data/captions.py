"""Text captions of training images, as G3 builds them from the reverse-geocoded address columns.

G3 (``MP16Dataset``) writes ``"A street view photo taken in " + ", ".join(parts)`` over the non-empty
parts among ``city, state, country``. Here empty, whitespace-only and NaN parts are skipped alike, and
a caption with no parts at all loses its trailing space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

#: G3's caption template; ``{location}`` is replaced by the non-empty parts joined by `CAPTION_SEPARATOR`.
CAPTION_TEMPLATE = "A street view photo taken in {location}"
#: The address columns G3 puts in its captions, in order.
CAPTION_FIELDS: tuple[str, ...] = ("city", "state", "country")
#: What joins the address parts.
CAPTION_SEPARATOR = ", "


def _template_parts(template: str) -> tuple[str, str]:
    """Text before and after ``{location}`` in ``template`` (with ``{{``/``}}`` unescaped)."""
    marker = "\x00"
    try:
        filled = template.format(location=marker)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"caption template {template!r} must contain exactly one '{{location}}' and no other fields"
        ) from exc
    if filled.count(marker) != 1:
        raise ValueError(f"caption template {template!r} must contain exactly one '{{location}}'")
    prefix, suffix = filled.split(marker)
    return prefix, suffix


def _clean_part(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    return str(value).strip()


def caption_for(
    city: object,
    state: object,
    country: object,
    *,
    template: str = CAPTION_TEMPLATE,
    separator: str = CAPTION_SEPARATOR,
) -> str:
    """G3's caption for one image: ``"A street view photo taken in {city}, {state}, {country}"``.

    Empty, whitespace-only, None and NaN parts are skipped.
    """
    prefix, suffix = _template_parts(template)
    location = separator.join(p for p in map(_clean_part, (city, state, country)) if p)
    return (prefix + location + suffix).strip()


def captions_for_frame(
    frame: pd.DataFrame,
    *,
    fields: Sequence[str] = CAPTION_FIELDS,
    template: str = CAPTION_TEMPLATE,
    separator: str = CAPTION_SEPARATOR,
) -> pd.Series:
    """Captions of every row of ``frame`` (vectorised), indexed like ``frame``.

    ``fields`` are the address columns joined in order; a column the frame lacks counts as empty.
    """
    prefix, suffix = _template_parts(template)
    joined = pd.Series("", index=frame.index, dtype=object)
    for field in fields:
        if field not in frame.columns:
            continue
        col = frame[field]
        part = col.astype(object).where(col.notna(), "").astype(str).str.strip()
        # Each non-empty part is written as separator + part; the leading separator is cut below.
        joined = joined + part.where(part == "", separator + part)
    location = joined.str.slice(len(separator))
    return (prefix + location + suffix).str.strip().astype(object).rename("caption")
