"""The push-latency bench's front ends and Cobalt (bench/latency.py): waiters held by web
process A while signed webhooks settle their jobs through web process B, callbacks driven at
a steady rate, and front ends counting their requests from submit to outcome.

Times are `time.perf_counter()` (the system's monotonic clock, the same in every thread);
a push is timed from the moment the webhook's 200 has been read to the moment the waiter's
answer (or event, or callback) has been, so it can be slightly negative: the service
notifies at commit and answers the webhook just after.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bench import load
from bench.frontend import Answer, CallbackReceiver, follow_job, request, terminal
from bench.latency_report import summary

if TYPE_CHECKING:
    from bench.latency import Plan
    from bench.run import Bench

HOLD_WAIT = 25  # Prefer: wait=25, the most the service holds
HELD_SETTLE_SECONDS = 0.5  # after sending the long polls, before settling their jobs
ANSWER_SECONDS = 5.0  # a waiter not answered this long after its webhook's 200: lost
PACE_SECONDS = 0.02  # between one push measured and the next webhook
CALLBACK_GRACE_SECONDS = 20.0  # after the last webhook, for the last callbacks


class WebhookFailed(Exception):
    pass


# What one request or waiter may meet; counted as errors, and the run goes on. (A cut
# connection is an EOFError, `asyncio.IncompleteReadError`; a garbled answer a ValueError.)
FAILURES = (WebhookFailed, OSError, EOFError, ValueError, TimeoutError)


class Push:
    """Front ends on port `held_on` (A); Cobalt's webhooks to port `webhooks_to` (B)."""

    WARMUP_CALLBACKS = 10  # before the measured drive: the worker is up, the endpoint works

    def __init__(self, bench: Bench, plan: Plan, *, held_on: int, webhooks_to: int) -> None:
        self.plan = plan
        self.a, self.b = held_on, webhooks_to
        self.secret = bench.webhook_secret
        self.nonce = f"{bench.nonce}l"
        self.auth = {"Authorization": f"Bearer {bench.token}"}
        self._ids = itertools.count(1)

    # --- Cobalt -------------------------------------------------------------------------------

    async def settle(self, number: int | None = None, appointment: str = "") -> tuple[float, float]:
        """POST a signed success event to B: for seeded job `number`, or for the note of
        `appointment` (no job id: matched by its appointment). Returns (sent, 200 read)."""
        index = next(self._ids)
        event_id, created = f"evt_latency_{self.nonce}_{index}", load.cobalt_time()
        if number is not None:
            body = load.outcome_event(number, event_id=event_id, created=created)
        else:
            data = {"appointment_id": appointment}
            body = load.cobalt_event(
                "note.created", data, event_id=event_id, created=created, job_id=None
            )
        headers = {
            "Content-Type": "application/json",
            "cobalt-verification": load.sign(body, self.secret),
            "webhook-id": f"msg_latency_{self.nonce}_{index}",
            "webhook-timestamp": created,
            "webhook-attempt": "1",
        }
        sent = time.perf_counter()
        answer = await request(self.b, "POST", "/webhooks/cobalt", headers, body.encode())
        if answer.status != 200:
            raise WebhookFailed(f"webhook answered {answer.status}: {answer.body[:200]!r}")
        return sent, answer.at

    # --- long polls and streams ---------------------------------------------------------------

    async def held(self, jobs: Sequence[tuple[str, int]], *, stream: bool) -> dict[str, Any]:
        """`waiters` at a time held on A (long polls, or job streams), each job then settled
        through B one by one; per job, from the webhook's 200 to the waiter's answer."""
        pushes: list[float] = []
        webhooks: list[float] = []
        errors: Counter[str] = Counter()
        for start in range(0, len(jobs), self.plan.waiters):
            batch = jobs[start : start + self.plan.waiters]
            waiters = await (self._streams(batch) if stream else self._long_polls(batch))
            for (_, number), waiter in zip(batch, waiters, strict=True):
                if waiter.done():
                    errors["answered before its webhook"] += 1
                    continue
                try:
                    sent, ok = await self.settle(number)
                    answered = await asyncio.wait_for(asyncio.shield(waiter), ANSWER_SECONDS)
                except FAILURES as exc:
                    errors[type(exc).__name__] += 1
                    continue
                if answered is None:
                    errors["not answered with the settled job"] += 1
                    continue
                pushes.append((answered - ok) * 1000)
                webhooks.append((ok - sent) * 1000)
                await asyncio.sleep(PACE_SECONDS)
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        return _pushed(pushes, webhooks, errors)

    async def _long_polls(
        self, batch: Sequence[tuple[str, int]]
    ) -> list[asyncio.Task[float | None]]:
        etags = await asyncio.gather(*(self._etag(job_id) for job_id, _ in batch))
        waiters = [
            asyncio.create_task(self._long_poll(job_id, etag))
            for (job_id, _), etag in zip(batch, etags, strict=True)
        ]
        await asyncio.sleep(HELD_SETTLE_SECONDS)
        return waiters

    async def _etag(self, job_id: str) -> str:
        answer = await request(self.a, "GET", f"/v1/jobs/{job_id}", self.auth)
        if answer.status != 200:
            raise RuntimeError(f"GET /v1/jobs/{job_id} answered {answer.status}")
        return answer.headers["etag"]

    async def _long_poll(self, job_id: str, etag: str) -> float | None:
        """When the long poll was answered with the job settled; None if it was not."""
        headers = {**self.auth, "If-None-Match": etag, "Prefer": f"wait={HOLD_WAIT}"}
        answer = await request(self.a, "GET", f"/v1/jobs/{job_id}", headers)
        return answer.at if answer.status == 200 and terminal(answer.json()) else None

    async def _streams(self, batch: Sequence[tuple[str, int]]) -> list[asyncio.Task[float | None]]:
        opened = [asyncio.Event() for _ in batch]
        waiters = [
            asyncio.create_task(self._stream(job_id, event))
            for (job_id, _), event in zip(batch, opened, strict=True)
        ]
        async with asyncio.timeout(30):
            await asyncio.gather(*(event.wait() for event in opened))
        return waiters

    async def _stream(self, job_id: str, opened: asyncio.Event) -> float | None:
        followed = await follow_job(self.a, job_id, self.auth, opened)
        return followed.terminal_at

    # --- callbacks ----------------------------------------------------------------------------

    async def callbacks(
        self, jobs: Sequence[tuple[str, int]], receiver: CallbackReceiver
    ) -> dict[str, Any]:
        """Register the receiver as the client's callback, then settle jobs through B at
        `callback_rate` a second; per job, from the webhook's 200 to its first callback."""
        body = json.dumps({"url": receiver.url}).encode()
        headers = {**self.auth, "Content-Type": "application/json"}
        registered = await request(self.a, "PUT", "/v1/callback", headers, body)
        if registered.status not in (200, 201):
            raise RuntimeError(
                f"PUT /v1/callback answered {registered.status}: {registered.body!r}"
            )
        warmup, measured = jobs[: self.WARMUP_CALLBACKS], jobs[self.WARMUP_CALLBACKS :]
        for _, number in warmup:
            await self.settle(number)
        await self._arrivals(receiver, [job_id for job_id, _ in warmup], 60.0)
        settled: dict[str, tuple[float, float]] = {}
        errors: Counter[str] = Counter()
        started = time.perf_counter() + 0.1

        async def one(index: int, job_id: str, number: int) -> None:
            await asyncio.sleep(
                max(0.0, started + index / self.plan.callback_rate - time.perf_counter())
            )
            try:
                settled[job_id] = await self.settle(number)
            except FAILURES as exc:
                errors[type(exc).__name__] += 1

        await asyncio.gather(*(one(i, job_id, n) for i, (job_id, n) in enumerate(measured)))
        driven = time.perf_counter() - started
        await self._arrivals(receiver, list(settled), CALLBACK_GRACE_SECONDS)
        arrived = {job_id: at for job_id, at in receiver.settled_at.items() if job_id in settled}
        pushes = [
            (arrived[job_id] - ok) * 1000
            for job_id, (_, ok) in settled.items()
            if job_id in arrived
        ]
        webhooks = [(ok - sent) * 1000 for sent, ok in settled.values()]
        lost = len(settled) - len(arrived)
        if lost:
            errors[f"no callback within {CALLBACK_GRACE_SECONDS:.0f} s"] += lost
        # In the order the webhooks were sent: a backlog shows as a rising median.
        order = [job_id for job_id, _ in measured if job_id in settled and job_id in arrived]
        tenth = max(1, len(order) // 10)
        by_tenth = [
            round(
                statistics.median((arrived[j] - settled[j][1]) * 1000 for j in order[k : k + tenth])
            )
            for k in range(0, len(order) - tenth + 1, tenth)
        ]
        span = max(arrived.values(), default=0.0) - min(arrived.values(), default=0.0)
        return {
            **_pushed(pushes, webhooks, errors),
            "settled": len(settled),
            "arrived": len(arrived),
            "achieved_rate": round(len(settled) / driven, 1),
            "delivered_per_s": round(len(arrived) / span, 1) if span else None,
            "p50_by_tenth_ms": by_tenth,
            "callbacks_received": receiver.received,
            "job_ids": order,
        }

    async def unregister(self) -> None:
        """DELETE /v1/callback: what was still to be sent is cancelled."""
        answer = await request(self.a, "DELETE", "/v1/callback", self.auth)
        if answer.status != 204:
            raise RuntimeError(f"DELETE /v1/callback answered {answer.status}: {answer.body!r}")

    @staticmethod
    async def _arrivals(receiver: CallbackReceiver, job_ids: Sequence[str], seconds: float) -> None:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            if all(job_id in receiver.settled_at for job_id in job_ids):
                return
            await asyncio.sleep(0.05)

    # --- requests a front end spends on one job -------------------------------------------------

    async def front_ends(self, accepted: Callable[[str], bool]) -> dict[str, Any]:
        """`jobs_per_mode` notes per way (long poll, stream, plain polling every Retry-After),
        all at once: each submitted to A, accepted by the Cobalt stub through the worker, and
        settled by its webhook to B `outcome_after` seconds later. Requests counted from the
        submission to the answer that shows the outcome."""
        ways = ("long_poll", "stream", "plain_polling")
        runs = [
            self._one_job(way, f"latency-{self.nonce}-{way}-{k}", accepted)
            for way in ways
            for k in range(self.plan.jobs_per_mode)
        ]
        done = await asyncio.gather(*runs)
        found: dict[str, Any] = {}
        for way in ways:
            mine = [result for result in done if result[0] == way]
            counts = [count for _, count, _ in mine]
            found[way] = {
                "counts": counts,
                "max": max(counts),
                "seen_ms": [round(seen, 1) for _, _, seen in mine],
            }
        return found

    async def _one_job(
        self, way: str, appointment: str, accepted: Callable[[str], bool]
    ) -> tuple[str, int, float]:
        """(way, requests, ms from the webhook's 200 to the outcome seen)."""
        note = {"appointment_id": appointment, "note": "Synthetic bench note."}
        headers = {**self.auth, "Content-Type": "application/json"}
        async with asyncio.timeout(120):
            answer = await request(self.a, "POST", "/v1/notes", headers, json.dumps(note).encode())
            if answer.status != 202:
                raise RuntimeError(f"POST /v1/notes answered {answer.status}: {answer.body!r}")
            job_id, count = answer.json()["id"], 1
            webhook = asyncio.create_task(self._cobalt_settles(job_id, appointment, accepted))
            if way == "stream":
                followed = await follow_job(self.a, job_id, self.auth)
                count, seen = count + 1, followed.terminal_at
            else:
                seen, count = await self._poll_until_settled(
                    job_id, answer, count, way == "long_poll"
                )
            _, ok = await webhook
        if seen is None:
            raise RuntimeError(f"{way}: the job's outcome was never seen")
        return way, count, (seen - ok) * 1000

    async def _poll_until_settled(
        self, job_id: str, answer: Answer, count: int, long: bool
    ) -> tuple[float | None, int]:
        etag, retry_after = answer.headers["etag"], float(answer.headers.get("retry-after", "2"))
        while count < 100:
            if not long:
                await asyncio.sleep(retry_after)
            headers = {**self.auth, "If-None-Match": etag}
            if long:
                headers["Prefer"] = f"wait={HOLD_WAIT}"
            answer = await request(self.a, "GET", f"/v1/jobs/{job_id}", headers)
            count += 1
            if answer.status == 200:
                etag = answer.headers["etag"]
                if terminal(answer.json()):
                    return answer.at, count
        return None, count

    async def _cobalt_settles(
        self, job_id: str, appointment: str, accepted: Callable[[str], bool]
    ) -> tuple[float, float]:
        """Cobalt's side: once the worker has submitted the note, its webhook after a while."""
        deadline = time.perf_counter() + 60
        while not await asyncio.to_thread(accepted, job_id):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"job {job_id} was not submitted to the Cobalt stub in 60 s")
            await asyncio.sleep(0.1)
        await asyncio.sleep(self.plan.outcome_after)
        return await self.settle(appointment=appointment)


def _pushed(pushes: list[float], webhooks: list[float], errors: Counter[str]) -> dict[str, Any]:
    return {"push_ms": summary(pushes), "webhook_ms": summary(webhooks), "errors": dict(errors)}
