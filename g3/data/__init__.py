"""Training data: image stores, captions and the geotagged corpus (MP16-Pro style)."""

from typing import TYPE_CHECKING

from g3.lazy import lazy_exports

if TYPE_CHECKING:
    from g3.data.captions import CAPTION_FIELDS, CAPTION_SEPARATOR, CAPTION_TEMPLATE, caption_for, captions_for_frame
    from g3.data.corpus import DROP_REASONS, MIN_IMAGE_BYTES, REQUIRED_COLUMNS, TEXT_COLUMNS, CorpusReport, GeoCorpus
    from g3.data.geocode import NominatimGeocoder, fill_location_text, reverse_geocode_offline
    from g3.data.images import (
        FolderImageStore,
        ImageStore,
        TarImageStore,
        decode_image,
        image_file_name,
        image_sizes,
        open_image_store,
        verify_image,
    )
    from g3.data.query_image import DEFAULT_MAX_PIXELS, QueryImage, load_query_image
    from g3.data.torch_dataset import CorpusImages

#: public name → its module, imported on first use (keeps this package's import light)
_EXPORTS = {
    "g3.data.captions": (
        "CAPTION_FIELDS",
        "CAPTION_SEPARATOR",
        "CAPTION_TEMPLATE",
        "caption_for",
        "captions_for_frame",
    ),
    "g3.data.corpus": (
        "DROP_REASONS",
        "MIN_IMAGE_BYTES",
        "REQUIRED_COLUMNS",
        "TEXT_COLUMNS",
        "CorpusReport",
        "GeoCorpus",
    ),
    "g3.data.geocode": ("NominatimGeocoder", "fill_location_text", "reverse_geocode_offline"),
    "g3.data.images": (
        "FolderImageStore",
        "ImageStore",
        "TarImageStore",
        "decode_image",
        "image_file_name",
        "image_sizes",
        "open_image_store",
        "verify_image",
    ),
    "g3.data.query_image": ("DEFAULT_MAX_PIXELS", "QueryImage", "load_query_image"),
    "g3.data.torch_dataset": ("CorpusImages",),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "CAPTION_FIELDS",
    "CAPTION_SEPARATOR",
    "CAPTION_TEMPLATE",
    "DEFAULT_MAX_PIXELS",
    "DROP_REASONS",
    "MIN_IMAGE_BYTES",
    "REQUIRED_COLUMNS",
    "TEXT_COLUMNS",
    "CorpusImages",
    "CorpusReport",
    "FolderImageStore",
    "GeoCorpus",
    "ImageStore",
    "NominatimGeocoder",
    "QueryImage",
    "TarImageStore",
    "caption_for",
    "captions_for_frame",
    "decode_image",
    "fill_location_text",
    "image_file_name",
    "image_sizes",
    "load_query_image",
    "open_image_store",
    "reverse_geocode_offline",
    "verify_image",
]
