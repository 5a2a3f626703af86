"""The "removed" and "has been in" lists of a meeting, kept in storage as well as in memory.

A chair who removes a site expects it to stay out, and a locked meeting must still let back
in the sites that were in it; both must hold across a server restart. MeetingControl keeps
these as plain sets that chair.py and session.py `add`/`discard`; a StoredSet is such a set
that writes each actual change through to storage (one small upsert, only on a change), so
neither caller needs to know about persistence.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

logger = logging.getLogger(__name__)


class StoredSet(set):
    """A set of site ids whose additions and removals are written through by `store`."""

    def __init__(self, items: Iterable[str], store: Callable[[str, bool], None]) -> None:
        super().__init__(items)
        self._store = store

    def _write(self, site_id: str, present: bool) -> None:
        try:
            self._store(site_id, present)
        except Exception:  # the in-memory decision still holds for this run
            logger.exception("could not store admission change for site %s", site_id)

    def add(self, site_id: str) -> None:  # type: ignore[override]
        if site_id not in self:
            super().add(site_id)
            self._write(site_id, True)

    def discard(self, site_id: str) -> None:  # type: ignore[override]
        if site_id in self:
            super().discard(site_id)
            self._write(site_id, False)

    def remove(self, site_id: str) -> None:  # type: ignore[override]
        if site_id not in self:
            raise KeyError(site_id)
        self.discard(site_id)

    def clear(self) -> None:
        for site_id in list(self):
            self.discard(site_id)


def load_admissions(control: Any, storage: Any, meeting_id: str) -> None:
    """Fill `control.admitted` / `control.removed` from storage and keep them written through."""
    loader = getattr(storage, "site_admissions", None)
    if loader is None:  # a store without admissions (tests of signaling alone): memory only
        return
    admitted, removed = loader(meeting_id)
    control.admitted = StoredSet(admitted, lambda s, v: storage.set_site_admission(meeting_id, s, "admitted", v))
    control.removed = StoredSet(removed, lambda s, v: storage.set_site_admission(meeting_id, s, "removed", v))
