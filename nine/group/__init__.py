"""Group file operations over many members: the aggregators (nine.group.aggregate, the
names exported here) and the group service (nine.group.service, which lists the modules
it is made of)."""
from .aggregate import (
    Aggregator, AggregatorError, Partial, UnknownAggregator, fold, get, names,
    natural_key, register,
)

__all__ = ["Aggregator", "AggregatorError", "Partial", "UnknownAggregator", "fold", "get",
           "names", "natural_key", "register"]
