"""What the consumer said on a call, as the dialer reports it on its BYE: the trunk's `objection_header`
(e.g. `X-Sipfilter-Objection: opposition`) records a refusal or a permanent opposition for the call's
account and callee, exactly as the admin API would, with its audit line.

Off the SIP path: the BYE is answered and relayed first, the record is written in a task of its own. Never
raises into the B2BUA.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sipfilter import records

log = logging.getLogger(__name__)

KINDS = {"refusal": records.refuse, "opposition": records.oppose}


class DialerObjections:
    """One per B2BUA: starts a record per reported objection and keeps its task until it is done."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def on_bye(self, store: Any, audit: Any, trunk: Any, callee: str, value: str | None, now: float) -> None:
        """`value`: the header's value on the dialer's BYE (None: absent)."""
        if value is None:
            return
        kind = value.partition(";")[0].strip().lower()
        if kind in ("", "none"):  # the dialer sends the header on every BYE: nothing was said
            return
        if kind not in KINDS:
            log.warning("trunk %s: %s: %r is neither refusal nor opposition (not recorded)", trunk.name,
                        trunk.objection_header, value[:80])
            return
        if not callee:
            log.warning("trunk %s: %s on a call without a valid callee (not recorded)", trunk.name, kind)
            return
        task = asyncio.get_running_loop().create_task(
            self._record(store, audit, kind, trunk.account, callee, now, f"dialer:{trunk.name}"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _record(store: Any, audit: Any, kind: str, account: str, number: str, at: float,
                      source: str) -> None:
        try:
            event = await KINDS[kind](store, account, number, at, source)
        except Exception as exc:  # the store is down: the dialer's word must not vanish silently
            log.error("%s for %s %s reported by the dialer could not be recorded: %s: %s (record it with "
                      "`sipfilter %s add` or the admin API)", kind, account, number, type(exc).__name__, exc,
                      kind)
            return
        log.info("%s recorded for %s %s (%s)", kind, account, number, source)
        if audit is not None:
            audit.write(event)
