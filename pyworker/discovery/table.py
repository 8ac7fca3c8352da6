"""The region's endpoint table as a discovery source writes it: one
seqlocked write per app whose endpoints changed, apps a source no longer
names emptied.  Every source (the service file, etcd, xDS) writes through
this, so the table behaves the same whichever feeds it."""

import logging

log = logging.getLogger("pyworker.discovery")


class EndpointTable:
    """Writes {app: [(ip, port, site), ...]} into a region.

    It remembers what it wrote rather than reading the table back: a new
    writer (a restarted supervisor or discovery process) writes every app
    once, which also repairs an entry a writer killed mid-write left
    unreadable."""

    def __init__(self, region, source):
        self.region = region
        self.source = source  # names the writer in the log
        self.written = {}  # app -> endpoints, in table order
        self.known = None  # the table's apps at the first sync

    def write(self, app, endpoints):
        """Writes one app if its endpoints changed; True if written.
        Raises what the region raises (a full table, a bound)."""
        order = table_order(endpoints)
        if self.written.get(app) == order:
            return False
        gen = self.region.set_endpoints(app, endpoints)
        self.written[app] = order
        log.info(
            "service discovery: app %s: %d endpoint(s) from %s, generation %d",
            app,
            len(endpoints),
            self.source,
            gen,
        )
        return True

    def empty(self, app):
        """Empties an app the source no longer names."""
        if self.written.get(app) == []:
            return False
        self.region.set_endpoints(app, [])
        self.written[app] = []
        log.info(
            "service discovery: app %s is gone from %s: no endpoint",
            app,
            self.source,
        )
        return True

    def sync(self, apps, keep=()):
        """Makes the table hold exactly ``apps``: changed apps written,
        others emptied, but for those in ``keep`` (left as they are).
        True if anything was written."""
        if self.known is None:
            # apps a writer before this one left in the table
            self.known = set(self.region.endpoint_apps())
        changed = False
        for app, endpoints in apps.items():
            changed |= self.write(app, endpoints)
        for app in sorted(self.known | set(self.written)):
            if app not in apps and app not in keep:
                changed |= self.empty(app)
        return changed


def table_order(endpoints):
    """Endpoints as the table keeps them: grouped by site, sites in the
    order they first appear, source order within a site."""
    order = []
    for _, _, site in endpoints:
        if site not in order:
            order.append(site)
    return [tuple(e) for site in order for e in endpoints if e[2] == site]
