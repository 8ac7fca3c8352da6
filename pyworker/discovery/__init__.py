"""Service discovery: the endpoints of ``mosn_subset`` upstreams, kept in
the region's endpoint table by the supervisor, from one source per
gateway named in the MOSN config's ``pyworker`` block:

    servicefile  MOE's service file: its format and the service_file key
    filewatch    the file, watched by the supervisor
    etcd         one key per app under an etcd prefix, watched (and the
                 filter config under one key)
    xds          CDS and EDS from an xDS control plane over ADS
    options      the ``discovery`` key: which source, checked
    table        how every source writes the endpoint table
    supervised   the supervisor's side: the source kept running, the
                 store's filter config checked and rolled out
    process      ``pyworker discover``, the child that follows etcd or xDS
    stats        what the metrics say of a source

Endpoints change without a reload.
"""

from pyworker.discovery.filewatch import POLL_INTERVAL, Watcher
from pyworker.discovery.options import (
    EtcdSource,
    FileSource,
    XdsSource,
    discovery_of,
    discovery_option,
)
from pyworker.discovery.servicefile import (
    MAX_APPS,
    MAX_ENDPOINTS,
    MAX_SITES,
    ServiceFileError,
    load,
    loads,
    parse,
    parse_app,
    service_file_of,
    service_file_option,
)

__all__ = [
    "ServiceFileError",
    "load",
    "loads",
    "parse",
    "parse_app",
    "service_file_option",
    "service_file_of",
    "discovery_option",
    "discovery_of",
    "FileSource",
    "EtcdSource",
    "XdsSource",
    "Watcher",
    "POLL_INTERVAL",
    "MAX_APPS",
    "MAX_ENDPOINTS",
    "MAX_SITES",
]
