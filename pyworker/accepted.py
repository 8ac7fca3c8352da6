"""The MOSN config the pool accepted last, for every process it starts
later: a worker that replaces one that died, the admin process, and a
supervisor that nginx respawns.  The file nginx names may have been
edited since and a reload refused it; like nginx's own workers, which
keep the cycle they were given, they must not load what is on disk now.

The copy lives in /dev/shm/<region>.config, a directory of the
supervisor's user open to no one else (workers read their config before
they drop privileges), beside the generation it belongs to: the nginx
master, the region, and the number of the master's last order.  Filter
code is not copied: a worker started later imports it as it is then.
"""

import json
import logging
import os
import tempfile

from pyworker import statsdir
from pyworker.atomic import replace, write_json

log = logging.getLogger("pyworker.supervisor")

CONFIG = "mosn.json"
CANDIDATE = "candidate.json"
GENERATION = "generation.json"


class AcceptedConfig:
    def __init__(self, shm, generation):
        self.shm = shm
        self.generation = list(generation)  # master pid, region dev, ino
        self.dir = None
        self.source = None  # the file the copy was taken from

    @property
    def path(self):
        return os.path.join(self.dir, CONFIG)

    def restore(self, seq):
        """The copy kept for this generation at order seq, or None: what a
        respawned supervisor loads instead of the file."""
        if not self._open():
            return None
        try:
            with open(os.path.join(self.dir, GENERATION)) as f:
                kept = json.load(f)
        except (OSError, ValueError):
            return None
        if (
            not isinstance(kept, dict)
            or kept.get("generation") != self.generation
            or kept.get("seq") != seq
            or not os.path.isfile(self.path)
        ):
            return None
        self.source = kept.get("source")
        return self.path

    def accept(self, source, seq, check=None):
        """Copies source and, with check, checks the copy: the path of the
        copy, now the accepted config; None if refused (the one before
        stays accepted, for order seq too)."""
        if not self._open():
            # nowhere to keep a copy: the file itself, as it is then
            return source if check is None or check(source, source) else None
        candidate = os.path.join(self.dir, CANDIDATE)
        try:
            with open(source, "rb") as f:
                data = f.read()
            replace(candidate, data)
        except OSError as exc:
            log.error("reload refused: cannot read %s: %s", source, exc)
            return self._refuse(seq)
        if check is not None and not check(candidate, source):
            os.unlink(candidate)
            return self._refuse(seq)
        os.replace(candidate, self.path)
        self.source = source
        self._write_generation(seq)
        return self.path

    def _refuse(self, seq):
        if self.source is None:
            # nothing accepted in this generation: no copy of another's
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self._write_generation(seq)
        return None

    def remove(self):
        statsdir.remove(self.dir, None)
        self.dir = None

    def _open(self):
        if self.dir is not None:
            return True
        path = os.path.join(statsdir.SHM, self.shm.lstrip("/") + ".config")
        try:
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                statsdir.ours(path, None)
            self.dir = path
        except statsdir.StatsDirError as exc:
            statsdir.remove_fallbacks(path, None)
            self.dir = tempfile.mkdtemp(
                prefix=os.path.basename(path) + ".", dir=statsdir.SHM
            )
            log.error(
                "%s %s; keeping the accepted config in %s instead",
                path,
                exc,
                self.dir,
            )
        except OSError as exc:
            log.error(
                "cannot keep the accepted config in %s: %s; processes "
                "started later read the file as it is then",
                path,
                exc,
            )
            return False
        return True

    def _write_generation(self, seq):
        doc = {
            "generation": self.generation,
            "seq": seq,
            "source": self.source,
        }
        write_json(os.path.join(self.dir, GENERATION), doc, mode=0o600)
