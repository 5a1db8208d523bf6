"""Where G3's published artifacts live: every repository id, revision and file name in one place.

Confirmed (the README of the G3 authors' code, github.com/Applied-Machine-Learning-Lab/G3): the checkpoints and
the retrieval index are in the model repository ``Jia-py/G3-checkpoint``; the MP16-Pro images and metadata in
the dataset repository ``Jia-py/MP16-Pro``. The official code loads ``g3.pth`` (a state dict in the README's
quick start, a whole pickled model in ``IndexSearch.py``) and writes/reads the index as ``g3.index``
(``faiss.IndexFlatIP(768 * 3)``, one row per line of ``MP16_Pro_filtered.csv``).

Not confirmed from here (this was written without access to the hub): the paths inside the repositories (taken
from the project's notes: ``g3.pth`` and ``g3.index`` at the root, ``metadata/MP16_Pro_filtered.csv``), a commit to pin,
the exact sizes and the checksums. Hence ``revision`` is ``main`` and ``size``/``sha256`` are unset: the first
download records the commit the hub resolved (``X-Repo-Commit``), the size and the SHA-256 in the bundle's
``fetch.json``, and later runs and resumed downloads stay on that commit. The hub's ETag of a large (LFS/Xet)
file is its SHA-256, which every download is checked against. Once confirmed, fill in ``revision`` (a commit
id), ``size`` and ``sha256`` here and both downloads and ``--from`` files are checked against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: The hub's address when ``HF_ENDPOINT`` is not set.
DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class HubFile:
    """One published file: where it is on the hub and what it should be."""

    key: str  # "checkpoint" | "index" | "metadata"
    repo_id: str
    repo_type: Literal["model", "dataset"]
    path: str  # inside the repository
    revision: str  # a branch, tag or (best) a commit id
    what: str
    approx_size: str  # for people (messages, docs); `size` is what is checked
    size: int | None = None
    sha256: str | None = None

    @property
    def name(self) -> str:
        """The file's name (its path's last part)."""
        return self.path.rsplit("/", 1)[-1]

    def url(self, endpoint: str = DEFAULT_ENDPOINT, revision: str | None = None) -> str:
        """The hub's download address of the file (``…/resolve/REVISION/PATH``)."""
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        return f"{endpoint.rstrip('/')}/{prefix}{self.repo_id}/resolve/{revision or self.revision}/{self.path}"


CHECKPOINT = HubFile(
    key="checkpoint",
    repo_id="Jia-py/G3-checkpoint",
    repo_type="model",
    path="g3.pth",
    revision="main",
    what="G3's geo-aligner (CLIP ViT-L/14 and the trained heads)",
    approx_size="about 1.8 GB (estimated from the model's 442M float32 parameters)",
)
INDEX = HubFile(
    key="index",
    repo_id="Jia-py/G3-checkpoint",
    repo_type="model",
    path="g3.index",
    revision="main",
    what="G3's MP16-Pro retrieval index (FAISS IndexFlatIP of 2304-d keys)",
    approx_size="about 38 GB (4.12M rows x 9,216 bytes)",
)
METADATA = HubFile(
    key="metadata",
    repo_id="Jia-py/MP16-Pro",
    repo_type="dataset",
    path="metadata/MP16_Pro_filtered.csv",
    revision="main",
    what="MP16-Pro metadata, row i describing index row i (IMG_ID, AUTHOR, LAT, LON, address columns)",
    approx_size="size not confirmed (a few hundred MB: one line per index row)",
)
#: The three files `g3 fetch official` gets.
OFFICIAL_FILES = (CHECKPOINT, INDEX, METADATA)
#: The CLIP G3 was trained with: its configuration, tokenizer and preprocessor (a few MB) are read from here
#: when converting ``g3.pth`` (whose CLIP weights are inside it). Equal to `g3.models.config.DEFAULT_CLIP`, not
#: imported from there so that `g3 fetch` reports a missing network before torch loads.
OFFICIAL_CLIP = "openai/clip-vit-large-patch14"
