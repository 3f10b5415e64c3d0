"""A circuit breaker per backend.

closed: calls go through; `failures` consecutive failures open it.
open: calls are skipped for `cooldown` seconds (a hung backend stops costing its deadline).
half-open: one probe call goes through; success closes, failure reopens.
"""

from __future__ import annotations

import time

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(self, failures: int = 3, cooldown: float = 30.0, clock=time.monotonic):
        self.threshold = max(1, failures)
        self.cooldown = cooldown
        self.clock = clock
        self.state = CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self._probe_in_flight = False

    def allow(self) -> bool:
        """May a call go through now? In half-open, only one caller gets True (the probe)."""
        if self.state == OPEN and self.clock() - self.opened_at >= self.cooldown:
            self.state = HALF_OPEN
            self._probe_in_flight = False
        if self.state == CLOSED:
            return True
        if self.state == HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self.state = CLOSED
        self.consecutive_failures = 0
        self._probe_in_flight = False

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self.state == HALF_OPEN or self.consecutive_failures >= self.threshold:
            self.state = OPEN
            self.opened_at = self.clock()
        self._probe_in_flight = False

    def release_probe(self) -> None:
        """The probe call ended without a verdict (e.g. the client cancelled it)."""
        self._probe_in_flight = False

    def current_state(self) -> str:
        """The state as a status report should show it, without taking the probe slot."""
        if self.state == OPEN and self.clock() - self.opened_at >= self.cooldown:
            return HALF_OPEN
        return self.state

    def describe(self) -> str:
        if self.state == OPEN:
            left = max(0.0, self.cooldown - (self.clock() - self.opened_at))
            return f"breaker open ({self.consecutive_failures} failures in a row; next probe in {left:.0f} s)"
        if self.state == HALF_OPEN:
            return "breaker half-open (a probe call is in flight)"
        return "breaker closed"
