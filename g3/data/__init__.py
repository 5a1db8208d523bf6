"""Training data: image stores, captions and the geotagged corpus (MP16-Pro style)."""

from g3.data.captions import (
    CAPTION_FIELDS,
    CAPTION_SEPARATOR,
    CAPTION_TEMPLATE,
    caption_for,
    captions_for_frame,
)
from g3.data.corpus import (
    DROP_REASONS,
    MIN_IMAGE_BYTES,
    REQUIRED_COLUMNS,
    TEXT_COLUMNS,
    CorpusReport,
    GeoCorpus,
)
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

__all__ = [
    "CAPTION_FIELDS",
    "CAPTION_SEPARATOR",
    "CAPTION_TEMPLATE",
    "DROP_REASONS",
    "MIN_IMAGE_BYTES",
    "REQUIRED_COLUMNS",
    "TEXT_COLUMNS",
    "CorpusReport",
    "FolderImageStore",
    "GeoCorpus",
    "ImageStore",
    "TarImageStore",
    "caption_for",
    "captions_for_frame",
    "decode_image",
    "image_file_name",
    "image_sizes",
    "open_image_store",
    "verify_image",
]
