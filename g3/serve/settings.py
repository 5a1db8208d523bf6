"""`ServeSettings`: the limits and policies of ``g3 serve``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from g3.serve.fetch import FetchPolicy
from g3.serve.map_tiles import tile_origin
from g3.serve.web import MapSettings


class ServeSettings(BaseModel):
    """Limits and policies of the server. API keys come from the environment (see `g3 serve`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: str = "g3"
    api_keys: tuple[str, ...] = Field(default=(), repr=False)
    max_body_bytes: int = Field(default=32 * 2**20, gt=0)
    max_image_bytes: int = Field(default=20 * 2**20, gt=0)
    max_images: int = Field(default=1, ge=1, description="photos per request (G3 locates one at a time)")
    max_text_chars: int = Field(default=8000, ge=0)
    max_concurrent: int = Field(default=4, ge=1, description="photos located at once")
    max_waiting: int = Field(default=32, ge=0, description="requests queued before 429")
    request_timeout_s: float = Field(default=300.0, gt=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    allowed_url_hosts: tuple[str, ...] = ()
    file_root: Path | None = None
    allow_private_networks: bool = False
    image_root: Path | None = Field(default=None, description="folder of the index's images (web thumbnails)")
    map_tiles: str | None = Field(
        default=None,
        description="tile URL template of the web page's map, e.g. https://tile.example/{z}/{x}/{y}.png "
        "(None: the offline Natural Earth outlines only)",
    )
    map_attribution: str = Field(default="", max_length=500, description="credit line for the tiles (plain text)")
    map_max_zoom: int = Field(default=19, ge=1, le=24, description="deepest zoom the tile server has")

    @field_validator("map_tiles")
    @classmethod
    def _check_map_tiles(cls, value: str | None) -> str | None:
        if value is not None:
            tile_origin(value)  # raises ValueError naming what is wrong
        return value

    def map_settings(self) -> MapSettings:
        return MapSettings(tiles=self.map_tiles, attribution=self.map_attribution, max_zoom=self.map_max_zoom)

    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(
            allowed_hosts=self.allowed_url_hosts,
            allow_private_networks=self.allow_private_networks,
            file_root=self.file_root,
            max_bytes=self.max_image_bytes,
        )
