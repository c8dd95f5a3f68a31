"""Dynamic batching (text-embeddings-inference's batcher): requests wait in a bounded queue; one model
thread takes up to `max_batch_size` inputs of one endpoint and options, or what arrived within
`max_wait_ms` of the first (of the model becoming free, for requests that queued while a batch ran: the
clients that batch just answered may send again in time to join), runs them as one batch, and hands
each request its results. Requests of another kind that arrive meanwhile keep their place for the next
batch, without cutting this one short. The event loop never runs the model, so /health answers while a
batch computes. A full queue is refused (QueueFull), never grown; an exception in a batch fails that
batch's requests only. Stopping answers every request still waiting (Stopping), so no client and no
shutdown ever waits for a batch that will not run."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


class QueueFull(Exception):
    """More inputs are waiting than the queue holds."""


class Stopping(Exception):
    """The server stopped before this request's batch ran."""


@dataclass(eq=False)
class Job:
    endpoint: str
    inputs: list
    options: dict
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """run(endpoint, inputs, options) -> one result per input, called on the model thread."""

    def __init__(self, run: Callable[[str, list, dict], list], max_batch_size: int = 64, max_wait_ms: float = 5.0,
                 max_queue: int = 1024, on_batch: Callable[[int], None] | None = None):
        self.run = run
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch or (lambda n: None)
        self.jobs: asyncio.Queue[Job] = asyncio.Queue()
        self.pending: set[Job] = set()  # submitted, not yet answered
        self.waiting = 0  # inputs queued, not yet taken by the model thread
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="electra-model")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """After the in-flight requests: the server stops accepting first, then calls this."""
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        for job in self.pending:
            if not job.future.done():
                job.future.set_exception(Stopping())
        self.pending.clear()
        await asyncio.to_thread(self.executor.shutdown, wait=True)  # the batch running now ends; the loop goes on

    async def submit(self, endpoint: str, inputs: list, options: dict) -> list:
        if self.waiting + len(inputs) > self.max_queue:
            raise QueueFull
        self.waiting += len(inputs)
        job = Job(endpoint, inputs, options, asyncio.get_running_loop().create_future())
        self.pending.add(job)
        try:
            await self.jobs.put(job)
            return await job.future
        finally:
            self.pending.discard(job)

    async def _loop(self) -> None:
        taken: deque[Job] = deque()  # out of the queue, not yet run: arrival order, any endpoint and options
        free_since = 0.0  # when the last batch's answers went out
        while True:
            if not taken:
                taken.append(await self.jobs.get())
            first = taken[0]
            key = (first.endpoint, first.options)
            deadline = max(first.enqueued, free_since) + self.max_wait
            of_key = sum(len(j.inputs) for j in taken if (j.endpoint, j.options) == key)
            while of_key < self.max_batch_size:
                timeout = deadline - time.perf_counter()
                try:
                    job = self.jobs.get_nowait() if timeout <= 0 else await asyncio.wait_for(self.jobs.get(), timeout)
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                taken.append(job)
                if (job.endpoint, job.options) == key:
                    of_key += len(job.inputs)
            # the first job's kind, in arrival order, up to the batch size; the rest wait for the next batches
            batch, size, rest = [], 0, deque()
            for job in taken:
                if (job.endpoint, job.options) == key and (not batch or size + len(job.inputs) <= self.max_batch_size):
                    batch.append(job)
                    size += len(job.inputs)
                else:
                    rest.append(job)
            taken = rest
            self.waiting -= size
            await self._run(batch, size)
            await asyncio.sleep(0)  # the answered requests' handlers write their responses first
            free_since = time.perf_counter()

    async def _run(self, batch: list[Job], size: int) -> None:
        inputs = [x for job in batch for x in job.inputs]
        self.on_batch(size)
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.run, batch[0].endpoint, inputs, batch[0].options)
        except Exception as e:  # noqa: BLE001 - the server goes on
            if len(batch) > 1:  # one request's input may be the cause: each runs alone, only the culprit fails
                for job in batch:
                    await self._run([job], len(job.inputs))
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(e)
            return
        start = 0
        for job in batch:
            if not job.future.done():  # the client may have gone
                job.future.set_result(results[start:start + len(job.inputs)])
            start += len(job.inputs)
