"""The database: the prediction log (spooled, never lost), drift runs and references, feedback
labels, job leases, the schema and its migrations."""

from .log import PredictionLog, PredictionRecord

__all__ = ["PredictionLog", "PredictionRecord"]
