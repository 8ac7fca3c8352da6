"""A case-insensitive, lazy header map whose edits overlay the source.

The source of the headers is, in production, a request slot in shared
memory: a subclass overrides the two hooks ``_source_get_all`` and
``_source_items`` to read it in place, so a filter that reads one header
costs one lookup and nothing is copied until a filter asks for everything.
Here the hooks serve the (name, value) pairs given to the constructor.

Names and values are ``str``; header bytes are decoded as latin-1, which is
lossless, so bytes that are not UTF-8 survive a round trip.
"""


class HeaderMap:
    """Request or response headers (MOSN's HeaderMap), read lazily, edited
    in an overlay.

    ``edits`` records every change in order as ("set"|"add"|"del", name,
    value or None); ``to_records()`` turns the overlay into the final
    set/remove records of a verdict.
    """

    __slots__ = ("_pairs", "_index", "_overlay", "edits")

    def __init__(self, pairs=()):
        # a list or tuple is kept as given, not copied: it is the source
        self._pairs = list(pairs.items()) if isinstance(pairs, dict) else pairs
        self._index = None
        # lower-cased name -> [keep_source, name as written, added pairs];
        # None until the first edit: an unedited map allocates nothing more
        self._overlay = None
        self.edits = []

    def _reset(self):
        """Forgets the edits (for a subclass reusing the object)."""
        self._index = None
        self._overlay = None
        self.edits = []

    # -- the source: override both in a subclass reading another store --

    def _source_get_all(self, lname):
        """Values of the source header ``lname`` (lower case), in order."""
        index = self._index
        if index is None:
            index = self._index = {}
            for name, value in self._pairs:
                index.setdefault(name.lower(), []).append(value)
        return index.get(lname, ())

    def _source_items(self):
        """Every (name, value) pair of the source, in arrival order."""
        return self._pairs

    # -- reading ---------------------------------------------------------

    def get(self, name, default=None):
        """The first value of ``name``, or ``default``."""
        lname = name.lower()
        overlay = self._overlay
        if overlay:
            entry = overlay.get(lname)
            if entry is not None:
                if entry[0]:
                    values = self._source_get_all(lname)
                    if values:
                        return values[0]
                added = entry[2]
                return added[0][1] if added else default
        values = self._source_get_all(lname)
        return values[0] if values else default

    def get_all(self, name):
        """Every value of ``name``, in order (an empty list if absent)."""
        lname = name.lower()
        overlay = self._overlay
        if overlay:
            entry = overlay.get(lname)
            if entry is not None:
                values = list(self._source_get_all(lname)) if entry[0] else []
                values.extend(value for _, value in entry[2])
                return values
        return list(self._source_get_all(lname))

    def __contains__(self, name):
        return self.get(name, _MISSING) is not _MISSING

    def items(self):
        """Every (name, value) pair in arrival order, duplicates kept, edits
        applied: a set replaces the header at its first position, an add
        goes to the end, a delete removes every line of that name."""
        pairs = list(self._source_items())
        for op, name, value in self.edits:
            lname = name.lower()
            if op == "add":
                pairs.append((name, value))
                continue
            at = next(
                (i for i, (n, _) in enumerate(pairs) if n.lower() == lname),
                len(pairs),
            )
            pairs = [pair for pair in pairs if pair[0].lower() != lname]
            if op == "set":
                pairs.insert(at, (name, value))
        return pairs

    def __iter__(self):
        """Iterates over (name, value) pairs, like ``items()``."""
        return iter(self.items())

    def __len__(self):
        """The number of header lines, duplicates included."""
        return len(self.items())

    def __repr__(self):
        return f"{type(self).__name__}({self.items()!r})"

    # -- editing ---------------------------------------------------------

    def set(self, name, value):
        """Replaces every line of ``name`` with one line ``name: value``."""
        _check_str(name, value)
        self._entry_for(name)[:] = [False, name, [(name, value)]]
        self.edits.append(("set", name, value))

    def add(self, name, value):
        """Adds a line ``name: value``, keeping the existing ones."""
        _check_str(name, value)
        lname = name.lower()
        overlay = self._overlay
        if overlay is None:
            overlay = self._overlay = {}
        entry = overlay.get(lname)
        if entry is None:
            overlay[lname] = [True, name, [(name, value)]]
        else:
            entry[2].append((name, value))
        self.edits.append(("add", name, value))

    def delete(self, name):
        """Removes every line of ``name`` (absent is fine)."""
        _check_str(name, "")
        self._entry_for(name)[:] = [False, name, []]
        self.edits.append(("del", name, None))

    def _entry_for(self, name):
        overlay = self._overlay
        if overlay is None:
            overlay = self._overlay = {}
        lname = name.lower()
        entry = overlay.get(lname)
        if entry is None:
            entry = overlay[lname] = [False, name, []]
        return entry

    def to_records(self, join=True):
        """The edits as verdict records: ``(set_lines, removed_names)``.

        Declarative, one entry per edited name: ``set_lines`` holds one line
        for every edited header that still has a value (it replaces all the
        lines of that name), ``removed_names`` every edited header left with
        none. A name is in one list or the other, never both, so the records
        can be applied in any order. A header left with several lines (an
        ``add`` to one that exists) becomes one line, its values joined with
        ", " as RFC 9110 (5.3) allows, or "; " for Cookie; with ``join``
        false (responses: Set-Cookie) it stays several lines of one name.
        """
        set_lines = []
        removed = []
        if self._overlay:
            for lname, (keep_source, name, added) in self._overlay.items():
                if not keep_source and len(added) == 1:
                    # the usual edit: a set
                    set_lines.append((name, added[0][1]))
                    continue
                values = (
                    list(self._source_get_all(lname)) if keep_source else []
                )
                values.extend([value for _, value in added])
                if not values:
                    removed.append(name)
                elif len(values) == 1:
                    set_lines.append((name, values[0]))
                elif not join:
                    set_lines.extend((name, value) for value in values)
                else:
                    glue = "; " if lname == "cookie" else ", "
                    set_lines.append((name, glue.join(values)))
        return set_lines, removed


# Earlier names of the one map, kept as aliases: the request phase's and
# the response phase's (over the upstream's response headers).
RequestHeaders = HeaderMap
ResponseHeaders = HeaderMap

_MISSING = object()


def _check_str(name, value):
    if not isinstance(name, str) or not isinstance(value, str):
        raise TypeError(
            f"header names and values must be str, got "
            f"{type(name).__name__} and {type(value).__name__}"
        )
