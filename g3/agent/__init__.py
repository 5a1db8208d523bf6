"""The G3 agent: configuration, the LangGraph workflow, and the `G3` entry point."""

from typing import TYPE_CHECKING

from g3.lazy import lazy_exports

if TYPE_CHECKING:
    from g3.agent.config import ConfigError, G3Config, LMMConfig, PipelineConfig
    from g3.agent.g3 import G3
    from g3.agent.prediction import Degradation, GeoPrediction, LMMUsage, Neighbour, RankedCandidate

#: public name → its module, imported on first use (keeps this package's import light)
_EXPORTS = {
    "g3.agent.config": ("ConfigError", "G3Config", "LMMConfig", "PipelineConfig"),
    "g3.agent.g3": ("G3",),
    "g3.agent.prediction": ("Degradation", "GeoPrediction", "LMMUsage", "Neighbour", "RankedCandidate"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "G3",
    "ConfigError",
    "Degradation",
    "G3Config",
    "GeoPrediction",
    "LMMConfig",
    "LMMUsage",
    "Neighbour",
    "PipelineConfig",
    "RankedCandidate",
]
