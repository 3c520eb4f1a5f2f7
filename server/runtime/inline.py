"""Whether a lone one-row request's forward pass may run on the event loop thread.

Handing a forward pass to an instance thread and back costs two thread wake-ups, about 50 µs each on
a virtual machine (README, "Where a lone request's time goes"). For a forward pass shorter than that,
running it on the loop, when nothing else waits, is faster for the caller, and measured so: the MLP
at concurrency 1 went from 1,013 to 1,255 requests/s, median of 3 pairs, every pair better.

The rule (issue #15's): the pass must be measured short, at load and since.
- At load, after the warmup, `PROBES` one-row passes run back to back; the fastest must be under
  the bound (`--inline-forward-us`; 100 µs is what the issue and the measurements above used).
- In service, every one-row pass is timed, on the loop or on an instance thread. Once there are
  `_WINDOW // 2` of them, they decide instead: the median of the last `_WINDOW` must be under twice
  the bound. The live bound is looser because a core that slept since the previous request runs a
  tiny pass several times slower than back to back (the MLP's: 15 µs warm, 85-150 µs as served); the
  CNN's, 260-440 µs as served, stays on the instance threads. The live passes decide because the
  load-time probe can be slowed many times over by the other models loading beside it.
- One pass over `TRIP` times the bound turns it off for good: that model's cost depends on its data
  (a loop, an early exit), and one such pass on the loop is the most it may ever block it for.

Off by default (`--inline-forward-us 0`): a model measured short can still take long on other data,
and a Triton or TorchServe user expects no model code on the thread that serves the network.
"""

from __future__ import annotations

import collections
import statistics

PROBES = 10
TRIP = 10
_WINDOW = 16


class InlineRule:
    """The inline decision for one model version; fed from any thread (each update is a few
    operations that the GIL keeps whole)."""

    def __init__(self, bound_ns: int) -> None:
        """`bound_ns`: the warm bound (--inline-forward-us); the live bound is twice it."""
        self.bound_ns = bound_ns
        self.warm_ns: float | None = None
        self.tripped = False  # a pass over TRIP x the bound was seen: this model's cost depends on its data
        self._live: collections.deque[int] = collections.deque(maxlen=_WINDOW)
        self.allowed = False

    def warmed(self, samples: list[int]) -> None:
        """The one-row passes timed back to back at load. The fastest counts: models load side by
        side at start, and a pass can only be slowed by what else runs, never sped up."""
        self.warm_ns = min(samples)
        self._decide()

    def record(self, elapsed_ns: int) -> bool:
        """A one-row pass as served; True when this pass turned the rule off for good."""
        self._live.append(elapsed_ns)
        over = elapsed_ns > TRIP * self.bound_ns
        turned_off = over and self.allowed
        self.tripped = self.tripped or over
        self._decide()
        return turned_off

    def summary(self) -> str:
        """For the load log: what the load-time probe measured and where lone requests run."""
        where = "a lone request runs on the event loop" if self.allowed else "always on instance threads"
        measured = "not measured" if self.warm_ns is None else f"{self.warm_ns / 1e3:.0f} µs"
        return f"one-row forward pass {measured}: {where}"

    def _decide(self) -> None:
        if self.tripped:
            self.allowed = False
        elif len(self._live) >= _WINDOW // 2:  # enough passes as served: they decide
            self.allowed = statistics.median(self._live) < 2 * self.bound_ns
        else:
            self.allowed = self.warm_ns is not None and self.warm_ns < self.bound_ns
