"""Drain: refusing new calls while shutting down, then ending the calls still up when the drain times out."""

from __future__ import annotations

from sipfilter.b2bua.calls import (
    ANSWERED,
    CALLING,
    CONFIRMED,
    DECIDING,
    EARLY,
    INSIDE,
    OUTSIDE,
)
from sipfilter.b2bua.health import Health


class Drain(Health):
    """Shutting down gracefully."""

    def start_draining(self, retry_after_s: int) -> None:
        self.draining = True
        self.retry_after_s = retry_after_s

    def hang_up_all(self) -> None:
        """End of the drain timeout: BYE every answered call, CANCEL the ringing ones, forget them all."""
        for call in list(self.calls_a.values()):
            call.ended_by = "shutdown"
            if call.state in (ANSWERED, CONFIRMED):
                self._send_bye(call, OUTSIDE)
                self._send_bye(call, INSIDE)
            elif call.state in (DECIDING, CALLING, EARLY):
                call.cancelled = True
                self._answer_a(call, 503, "Service Unavailable", [f"Retry-After: {self.retry_after_s}"])
                self._cancel_b(call)
            self._end(call, "shutdown")
