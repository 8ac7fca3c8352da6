"""The built-in stream filters; importing this package registers them."""

from pyworker.filters import echo, metadata  # noqa: F401  (they register)
