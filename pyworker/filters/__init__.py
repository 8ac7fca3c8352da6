"""The built-in stream filters; importing this package registers them."""

from pyworker.filters import (echo, ext_authz, metadata,  # noqa: F401
                              ratelimit)  # (they register)
