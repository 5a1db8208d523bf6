"""Exception types raised by g3. Every one says what was wrong and what to do about it."""

from __future__ import annotations


class G3Error(Exception):
    """Base class of all errors raised on purpose by g3."""


class InvalidCoordinatesError(G3Error, ValueError):
    """Latitude/longitude values that are NaN, infinite or out of range."""


class CheckpointError(G3Error):
    """A checkpoint or weight file that is missing, corrupt, or does not fit the model."""


class CorpusError(G3Error):
    """A corpus (CSV + images) that cannot be read as asked."""


class MissingDependencyError(G3Error, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class TrainingError(G3Error):
    """A training run that cannot start or resume as asked."""


class GeoIndexError(G3Error):
    """A geo index that cannot be built, read, or used with the given aligner."""


class AssetMissingError(G3Error, FileNotFoundError):
    """A published asset (G3's converted checkpoint or imported index) that is not there yet; the message names
    the command that gets it (``g3 fetch official``)."""


class FetchError(G3Error):
    """A download of published files that failed, was refused (size or checksum), or cannot start (offline)."""


class HubUnreachableError(FetchError):
    """The model hub cannot be reached (offline, DNS, refused or timed-out connection)."""


class GeocodingError(G3Error):
    """A geocoding service that failed or answered unusably; the message names the coordinate."""


class InvalidImageError(G3Error, ValueError):
    """An input image that cannot be used: undecodable, truncated, too large, or of an unsupported kind."""


class ImageTooLargeError(InvalidImageError):
    """An input image over the configured pixel limit (a guard against decompression bombs)."""


class EvaluationError(G3Error):
    """An evaluation run that cannot start or resume as asked."""


class LMMUnavailableError(EvaluationError):
    """An evaluation stopped early: the LMM failed for every photo so far (the message names why and where)."""


class DegradedRunError(EvaluationError):
    """A finished evaluation whose share of degraded predictions is over the limit. Everything was written;
    ``payload`` holds the run's metrics (as in ``metrics.json``)."""

    def __init__(self, message: str, payload: dict[str, object]) -> None:
        super().__init__(message)
        self.payload = payload


class RayWorkerError(G3Error):
    """Ray could not be started or reached, or a Ray worker failed to start or to finish its work."""


class PoolFormatError(G3Error, ValueError):
    """A candidate pool (a ``pools.jsonl`` line) that is not in the format of `g3.verify.pools`; the message
    names the file and line."""


class RankerError(G3Error):
    """A learned ranker that cannot be fitted, read or used (e.g. its feature schema does not match)."""


class ResultsFileError(G3Error):
    """A results file (``g3 locate --out``) that is not a g3 results CSV, or cannot be read or written."""


class BatchError(G3Error):
    """Some photos of a batch failed. ``results`` holds every photo's outcome in input order (a prediction,
    or the exception of a failed photo); ``errors`` maps the index of each failed photo to its exception."""

    def __init__(self, results: list[object], errors: dict[int, BaseException]) -> None:
        self.results = results
        self.errors = errors
        shown = "; ".join(f"#{i}: {type(e).__name__}: {e}" for i, e in list(errors.items())[:5])
        more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
        super().__init__(
            f"{len(errors)} of {len(results)} photos failed ({shown}{more}); the others were located: "
            "their predictions are in this error's .results (or pass return_exceptions=True to get the list)"
        )


class ImageFetchError(G3Error):
    """A request's image URL (``data:``, ``file:``, ``http(s):``) that was refused or could not be fetched.

    ``status`` is the HTTP status the server should answer (400, 403, 413, 415, 502 or 504) and ``code`` a short
    machine-readable reason (``"private_address"``, ``"image_too_large"``, …; `g3.serve.fetch` lists them).
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.status, self.code, str(self)))


class ConfigError(G3Error):
    """A configuration file or value that cannot be used."""


class PromptError(G3Error):
    """A prompt template that is missing or cannot be rendered."""


class TopoJSONError(G3Error, ValueError):
    """A TopoJSON file that cannot be decoded: not JSON, not a Topology, or with bad arc references."""


class RerankError(G3Error):
    """An LMM rerank answer that does not name one of the candidates offered."""
