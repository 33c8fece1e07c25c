"""The resolver's defaults, in a module of their own: the command line names them in its help
without loading dnspython (about 0.1 s), which only a lookup needs."""

DEFAULT_TIMEOUT = 3.0  # seconds for one lookup (A and AAAA together)
DEFAULT_CACHE_ENTRIES = 10_000
DEFAULT_CACHE_BYTES = 8 * 1024 * 1024
