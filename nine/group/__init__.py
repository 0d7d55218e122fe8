"""Group file operations over many members; see nine.group.aggregate for aggregation."""
from .aggregate import (
    Aggregator, AggregatorError, Partial, UnknownAggregator, fold, get, names,
    natural_key, register,
)

__all__ = ["Aggregator", "AggregatorError", "Partial", "UnknownAggregator", "fold", "get",
           "names", "natural_key", "register"]
