"""MOSN-style Python stream filters for nginx."""

__version__ = "0.1.0"

from pyworker.api import (
    CONTINUE,
    STOP,
    ConfigError,
    Context,  # noqa: E402
    MetadataDriver,
    StreamReceiverFilter,
    StreamSenderFilter,
)
from pyworker.headers import HeaderMap, RequestHeaders  # noqa: E402
from pyworker.registry import register_driver, register_filter  # noqa: E402
from pyworker.verdict import Verdict, VerdictError  # noqa: E402
from pyworker.chain import Chain  # noqa: E402

__all__ = [
    "__version__",
    "CONTINUE",
    "STOP",
    "ConfigError",
    "Context",
    "MetadataDriver",
    "StreamReceiverFilter",
    "StreamSenderFilter",
    "HeaderMap",
    "RequestHeaders",
    "register_driver",
    "register_filter",
    "Verdict",
    "VerdictError",
    "Chain",
]
