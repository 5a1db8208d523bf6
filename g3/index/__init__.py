"""The geo index: FAISS search over retrieval keys with row-aligned metadata, and GPS galleries.

The llama-index retriever (`g3.index.retriever`, imported on demand: it loads llama-index) is an adapter
over `GeoIndex.search`, not a retrieval path of its own.
"""

from typing import TYPE_CHECKING

from g3.lazy import lazy_exports

if TYPE_CHECKING:
    from g3.index.backend import FaissBackend, SearchBackend
    from g3.index.build import IndexBuildConfig, build_index
    from g3.index.convert import ConvertConfig, convert_index
    from g3.index.gallery import GallerySearchResult, GPSGallery, load_gallery_coordinates
    from g3.index.geo_index import GeoIndex, SearchHits, SearchResult
    from g3.index.importer import import_faiss_index
    from g3.index.manifest import IndexManifest
    from g3.neighbours import Neighbours

#: public name → its module, imported on first use (keeps this package's import light)
_EXPORTS = {
    "g3.index.backend": ("FaissBackend", "SearchBackend"),
    "g3.index.build": ("IndexBuildConfig", "build_index"),
    "g3.index.convert": ("ConvertConfig", "convert_index"),
    "g3.index.gallery": ("GallerySearchResult", "GPSGallery", "load_gallery_coordinates"),
    "g3.index.geo_index": ("GeoIndex", "SearchHits", "SearchResult"),
    "g3.index.importer": ("import_faiss_index",),
    "g3.index.manifest": ("IndexManifest",),
    "g3.neighbours": ("Neighbours",),  # one query's neighbours (`SearchHits.neighbours`)
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "ConvertConfig",
    "FaissBackend",
    "GPSGallery",
    "GallerySearchResult",
    "GeoIndex",
    "IndexBuildConfig",
    "IndexManifest",
    "Neighbours",
    "SearchBackend",
    "SearchHits",
    "SearchResult",
    "build_index",
    "convert_index",
    "import_faiss_index",
    "load_gallery_coordinates",
]
