"""The G3 agent: configuration, the LangGraph workflow, and the `G3` entry point."""

from g3.agent.config import ConfigError, G3Config, LMMConfig, PipelineConfig
from g3.agent.g3 import G3
from g3.agent.prediction import Degradation, GeoPrediction, LMMUsage, Neighbour, RankedCandidate

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
