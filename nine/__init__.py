"""nine: a 9P file-server network in the Plan 9 tradition."""
__version__ = "0.1.0"
