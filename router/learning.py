"""The learning loop's side of a running server: after a response is returned, keep a traffic
sample of the request and, for a sampled share, judge the answer (``router.sampling``).

``observe`` is the one call the request path makes (from accounting, once the
answer is final); it only queues. Everything else runs in background tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.outcome import Completion
from router.traffic import TrafficRecorder
from router.types import RequestSpec


@dataclass
class LearningLoop:
    traffic: TrafficRecorder | None = None

    def observe(self, spec: RequestSpec, completion: Completion) -> None:
        if self.traffic is not None:
            self.traffic.observe(spec, completion)

    async def start(self) -> None:
        if self.traffic is not None:
            await self.traffic.start()

    async def aclose(self) -> None:
        if self.traffic is not None:
            await self.traffic.aclose()
