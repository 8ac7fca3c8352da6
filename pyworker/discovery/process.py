"""``pyworker discover``: the process the supervisor starts to follow etcd
or an xDS control plane and write the endpoint table.

It reads the ``discovery`` block of the config, gives up root unless it
fetches the filter config too (see supervised.py), attaches to the
region and follows the source until it is stopped.  New filter configs go
to the supervisor as JSON lines on stdout.
"""

import asyncio
import json
import logging
import signal
import sys

from shm_ring import Region

from pyworker.discovery.options import discovery_of
from pyworker.discovery.stats import FLUSH_EVERY, SourceStats
from pyworker.discovery.table import EndpointTable
from pyworker.logs import setup_logging
from pyworker.privileges import die_with_parent, drop_privileges

log = logging.getLogger("pyworker.discovery")


def run(shm, config_path, stats_dir=None, uid=None, gid=None):
    die_with_parent(signal.SIGTERM)
    # it has no log file: what reaches nginx's error_log (WARNING and up)
    # is all it says, and a record per change would cost at 100 a second
    setup_logging(None, role="discovery", level=logging.WARNING)
    spec = discovery_of(config_path)
    if spec is None or spec.kind == "file":
        log.error("discovery: %s names no etcd or xDS source", config_path)
        return 2
    fetches_config = spec.kind == "etcd" and spec.config_key is not None
    if not fetches_config:
        drop_privileges(uid, gid)
    region = Region.attach(shm)
    table = EndpointTable(region, spec.describe())
    stats = SourceStats(spec.kind, stats_dir)
    if spec.kind == "etcd":
        from pyworker.discovery.etcd import EtcdFollower

        follower = EtcdFollower(
            spec, table, stats, _deliver if fetches_config else None
        )
    else:
        from pyworker.discovery.xds import XdsFollower

        follower = XdsFollower(spec, table, stats)
    try:
        asyncio.run(_main(follower, stats))
    finally:
        stats.flush(force=True)
        region.close()
    return 0


def _deliver(value, revision):
    """Hands a filter config value to the supervisor."""
    sys.stdout.write(
        json.dumps({"config": value, "revision": revision}) + "\n"
    )
    sys.stdout.flush()


async def _main(follower, stats):
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    flusher = asyncio.create_task(_flush(stats))
    try:
        await follower.run()
    except asyncio.CancelledError:
        pass
    finally:
        flusher.cancel()


async def _flush(stats):
    while True:
        stats.flush()
        await asyncio.sleep(FLUSH_EVERY)
