"""Group file operations over many members: the aggregators (nine.group.aggregate, the
names exported here) and the group service (nine.group.service, which lists the modules
it is made of)."""

__all__ = ["Aggregator", "AggregatorError", "Partial", "UnknownAggregator", "fold", "get",
           "names", "natural_key", "register"]


def __getattr__(name):
    if name not in __all__:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    from . import aggregate
    value = getattr(aggregate, name)
    globals()[name] = value
    return value
