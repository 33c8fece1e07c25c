class GeogateError(Exception):
    """A user-facing error: its message is one or two plain lines, shown without a traceback."""
