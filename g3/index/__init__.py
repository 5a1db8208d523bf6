"""The geo index: FAISS search over retrieval keys with row-aligned metadata, and GPS galleries.

The llama-index retriever lives in `g3.index.retriever` (imported on demand: it loads llama-index).
"""

from g3.index.backend import FaissBackend, SearchBackend
from g3.index.build import IndexBuildConfig, build_index
from g3.index.gallery import GallerySearchResult, GPSGallery, load_gallery_coordinates
from g3.index.geo_index import GeoIndex, Neighbours, SearchResult
from g3.index.manifest import IndexManifest

__all__ = [
    "FaissBackend",
    "GPSGallery",
    "GallerySearchResult",
    "GeoIndex",
    "IndexBuildConfig",
    "IndexManifest",
    "Neighbours",
    "SearchBackend",
    "SearchResult",
    "build_index",
    "load_gallery_coordinates",
]
