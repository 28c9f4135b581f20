"""The error of a search that cannot start or continue, raised by the controller and its steps."""

__all__ = ["SearchError"]


class SearchError(RuntimeError):
    """The search cannot start or continue (bad output folder, no scorable trial, ...)."""
