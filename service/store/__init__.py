"""The prediction log: every prediction, written off the request path, never lost."""

from .log import PredictionLog, PredictionRecord

__all__ = ["PredictionLog", "PredictionRecord"]
