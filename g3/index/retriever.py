"""`GeoRetriever`: an adapter that shows G3's retrieval step to llama-index as a retriever.

It is not a second retrieval path: a query (a retrieval key, or an image the aligner turns into one) goes
through one `GeoIndex.search`, whose hits become `g3.neighbours.Neighbours` by the one conversion the agent
uses too (`SearchHits.neighbours`); this module only wraps each neighbour as a ``NodeWithScore``. Its text
is the place name ("City, State, Country", or "lat, lon" when the place is unknown), its metadata carries
the IMG_ID, row, coordinates, relation ("similar" or "dissimilar") and rank. Similar nodes come first (most
similar first), then the dissimilar ones (least similar first); scores are the inner products with the query.
The agent itself does not use llama-index; benchmarks and llama-index pipelines do (`tests/test_retriever.py`).

This module imports llama-index at import time; `g3.index` does not import this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from g3.errors import MissingDependencyError
from g3.index.geo_index import GeoIndex
from g3.neighbours import Neighbours

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.callbacks.base import CallbackManager
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
except ImportError as exc:  # pragma: no cover - llama-index-core is a declared dependency
    raise MissingDependencyError(
        f"g3.index.retriever needs llama-index ({exc}); install it with `pip install llama-index-core`"
    ) from exc

if TYPE_CHECKING:
    from PIL import Image

    from g3.models import GeoAligner

SIMILAR = "similar"
DISSIMILAR = "dissimilar"


class GeoRetriever(BaseRetriever):
    """Retrieves the ``similar_k`` most similar and ``dissimilar_k`` least similar rows of a `GeoIndex`.

    The query of a ``QueryBundle`` is its ``embedding`` (a retrieval key of width ``index.dim``) when
    set, else its ``image_path``, encoded with ``aligner`` (which must then be given and must be the
    aligner the index was built with). ``query_str`` is not used.
    """

    def __init__(
        self,
        index: GeoIndex,
        aligner: GeoAligner | None = None,
        *,
        similar_k: int = 20,
        dissimilar_k: int = 0,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        if similar_k < 1 or dissimilar_k < 0:
            raise ValueError(f"need similar_k ≥ 1 and dissimilar_k ≥ 0, got {similar_k} and {dissimilar_k}")
        if aligner is not None and aligner.key_dim != index.dim:
            raise ValueError(
                f"the aligner's keys have width {aligner.key_dim}, the index's {index.dim}: "
                "use the aligner the index was built with"
            )
        super().__init__(callback_manager=callback_manager)
        self.index = index
        self.aligner = aligner
        self.similar_k = similar_k
        self.dissimilar_k = dissimilar_k

    # -- llama-index entry points -----------------------------------------------------------------

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if query_bundle.embedding is not None:
            key = np.asarray(query_bundle.embedding, dtype=np.float32)
        elif query_bundle.image_path is not None:
            key = self.encode(query_bundle.image_path)
        else:
            raise ValueError(
                "GeoRetriever needs a query image: give the QueryBundle an embedding (a retrieval key) or an image_path"
            )
        return self.nodes_for_key(key)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._retrieve(query_bundle)

    # -- conveniences -----------------------------------------------------------------------------

    def retrieve_image(self, image: Image.Image | str | os.PathLike[str] | np.ndarray) -> list[NodeWithScore]:
        """Retrieve for an image, an image file, or a retrieval key ``(D,)``, through `retrieve`
        (so llama-index callbacks and instrumentation see the query)."""
        if isinstance(image, str | os.PathLike):
            return self.retrieve(QueryBundle(query_str="", image_path=os.fspath(image)))
        key = np.asarray(image, dtype=np.float32) if isinstance(image, np.ndarray) else self.encode(image)
        return self.retrieve(QueryBundle(query_str="", embedding=key.reshape(-1).tolist()))

    def encode(self, image: Image.Image | str | os.PathLike[str]) -> np.ndarray:
        """The retrieval key ``(D,)`` float32 of an image (or image file) under the aligner."""
        if self.aligner is None:
            raise ValueError(
                "GeoRetriever was given no aligner, so it cannot encode images: pass the aligner the index was "
                "built with (GeoRetriever(index, aligner)), or query with a retrieval key (QueryBundle.embedding)"
            )
        import torch
        from PIL import Image

        if isinstance(image, str | os.PathLike):
            with Image.open(Path(image)) as opened:
                image = opened.convert("RGB")
        elif image.mode != "RGB":
            image = image.convert("RGB")
        with torch.no_grad():
            key = self.aligner.encode_image([image]).key
        return key[0].detach().float().cpu().numpy()

    def nodes_for_key(self, key: np.ndarray) -> list[NodeWithScore]:
        """One `GeoIndex.search` for ``key`` ``(D,)`` and its neighbours as nodes (no callbacks)."""
        dissimilar = self.dissimilar_k > 0
        result = self.index.search(
            key, self.similar_k, dissimilar=dissimilar, dissimilar_k=self.dissimilar_k if dissimilar else None
        )
        parts = [(SIMILAR, result.similar.neighbours(0))]
        if result.dissimilar is not None:
            parts.append((DISSIMILAR, result.dissimilar.neighbours(0)))
        return [node for relation, found in parts for node in _nodes(relation, found)]


def _nodes(relation: str, found: Neighbours) -> list[NodeWithScore]:
    """One node per neighbour, in order (``rank`` is the position among the relation's neighbours)."""
    nodes: list[NodeWithScore] = []
    for rank, (row, (lat, lon, score, place, img_id)) in enumerate(zip(found.index_rows.tolist(), found.rows(),
                                                                       strict=True)):  # fmt: skip
        metadata: dict[str, Any] = {"img_id": img_id, "row": row, "lat": lat, "lon": lon, "relation": relation,
                                    "rank": rank}  # fmt: skip
        text = place or f"{lat:.5f}, {lon:.5f}"
        nodes.append(NodeWithScore(node=TextNode(id_=f"{relation}:{row}", text=text, metadata=metadata), score=score))
    return nodes
