"""What the sidecar says about itself: `/healthz`'s body and the `healthy` / `config_errors` gauges.

The sidecar fails open (a logging problem must never stop the job), so its liveness answer is 200
whenever the process answers at all; a restart would not mend a missing Secret or a bad URL. What
is wrong is in the body instead, and in the gauges, which is where alerts look:

- `not_shipping`: the configuration is unusable (each problem named); logwrap is installed anyway,
  and the configuration is read again every `config_retry` seconds;
- `degraded`: shipping, but at risk: the aggregator has not accepted an attempt for a while (it
  is unreachable or refuses the token), logwrap could not be installed, or the volume's delivered
  space cannot be given back;
- `ok`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from shipper.client import AggregatorClient
from shipper.metrics import ShipperMetrics

#: A failing aggregator marks the shipper degraded once no attempt succeeded for this many longest
#: retry delays (`backoff_max`), and at least a second, so one retried hiccup does not flap the gauge.
FAILING_AFTER_DELAYS: Final = 2.0


def assess(problems: tuple[str, ...], risks: dict[str, str], failing: str | None) -> str:
    """The status word for `/healthz` (pure)."""
    if problems:
        return "not_shipping"
    if risks or failing:
        return "degraded"
    return "ok"


class Health:
    """The shipper's current problems, and the report `/healthz` and `/readyz` answer with."""

    def __init__(self, metrics: ShipperMetrics, problems: tuple[str, ...] = (),
                 warnings: tuple[str, ...] = ()) -> None:
        self.metrics = metrics
        self.warnings = warnings
        #: logwrap is in the volume (the startup probe's condition)
        self.ready = False
        #: the client shipping, once there is one
        self.client: AggregatorClient | None = None
        #: the runner's own details (streams, draining), once it runs
        self.details: Callable[[], dict[str, object]] = dict
        #: risks while shipping, by what they concern ("logwrap", "reclaim", ...)
        self.risks: dict[str, str] = {}
        self.problems: tuple[str, ...] = ()
        self.set_problems(problems)
        metrics.healthy.set_function(lambda: 1.0 if self.status() == "ok" else 0.0)

    def set_problems(self, problems: tuple[str, ...]) -> None:
        self.problems = problems
        self.metrics.config_errors.set(len(problems))

    def risk(self, what: str, text: str | None) -> None:
        """Note (or, with None, clear) a risk to the logs."""
        if text is None:
            self.risks.pop(what, None)
        else:
            self.risks[what] = text

    def failing(self) -> str | None:
        """The aggregator's trouble in one line, when no attempt succeeded for a while."""
        client = self.client
        out = client.failing if client is not None else None
        if client is None or out is None:
            return None
        seconds = time.monotonic() - client.failing_since
        if seconds < max(FAILING_AFTER_DELAYS * client.backoff_max, 1.0):
            return None
        what = (f"answers {out.status}" if out.status is not None else "unreachable")
        return f"aggregator {out.url} {what} for {seconds:.0f} s: {out.detail}"[:400]

    def status(self) -> str:
        return assess(self.problems, self.risks, self.failing())

    def report(self) -> dict[str, object]:
        failing = self.failing()
        risks = dict(self.risks)  # a copy: the checkpoint writer's thread may add one (reclaim)
        problems = [*self.problems, *risks.values(), *([failing] if failing else [])]
        return {"status": assess(self.problems, risks, failing), "shipping": not self.problems,
                "ready": self.ready, "problems": problems, "warnings": list(self.warnings),
                **self.details()}
