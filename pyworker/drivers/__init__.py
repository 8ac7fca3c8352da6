"""The built-in metadata drivers; importing this package registers them."""

from pyworker.drivers import env, unit  # noqa: F401  (they register)
