"""The HTTP routes of `electra serve` (Starlette): validation, limits, errors as JSON, Prometheus metrics,
the try-it page. Requests are checked here, on the event loop, so one malformed request never reaches
a batch that other requests share; the batcher (serve/batcher.py) and the backend (serve/backends.py)
do the rest."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from importlib import resources

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from electra.errors import UserError
from electra.serve.backends import Backend
from electra.serve.batcher import Batcher, QueueFull, Stopping


@dataclass
class Limits:
    max_body_bytes: int = 1 << 20
    max_inputs: int = 256
    max_text_chars: int = 20_000
    max_queue: int = 1024


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("electra_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "code"], registry=self.registry)
        self.errors = Counter("electra_errors", "Requests that failed (4xx and 5xx) by endpoint",
                              ["endpoint"], registry=self.registry)
        self.batch_size = Histogram("electra_batch_size", "Inputs per model batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.queue = Gauge("electra_queue_depth", "Inputs waiting for the model", registry=self.registry)
        self.latency = Histogram("electra_request_latency_seconds", "Request latency by endpoint", ["endpoint"],
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10), registry=self.registry)


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(backend: Backend, max_batch_size: int = 64, max_wait_ms: float = 5.0,
               limits: Limits | None = None) -> Starlette:
    limits = limits or Limits()
    metrics = Metrics()
    state = {"ready": False, "in_flight": 0}
    batcher = Batcher(backend.run, max_batch_size, max_wait_ms, limits.max_queue,
                      on_batch=metrics.batch_size.observe)

    async def model_route(request: Request) -> Response:
        endpoint = request.url.path.rsplit("/", 1)[-1]
        started = time.perf_counter()
        state["in_flight"] += 1
        try:
            response = await _answer(request, endpoint)
        finally:
            state["in_flight"] -= 1
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        if response.status_code >= 400:
            metrics.errors.labels(endpoint).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    async def _answer(request: Request, endpoint: str) -> Response:
        if endpoint not in backend.endpoints:
            return error(404, f"this model has no /v1/{endpoint}; it serves "
                              f"{', '.join('/v1/' + e for e in backend.endpoints)}")
        if not state["ready"]:
            return error(503, "the server is stopping", {"Retry-After": "1"})
        try:
            inputs, options = await _read(request, endpoint, backend, limits)
        except _Refused as e:
            return error(e.status, str(e))
        try:
            metrics.queue.set(batcher.waiting + len(inputs))
            outputs = await batcher.submit(endpoint, inputs, options)
        except QueueFull:
            return error(503, f"the queue is full ({limits.max_queue} inputs wait); retry shortly",
                         {"Retry-After": "1"})
        except Stopping:
            return error(503, "the server is stopping", {"Retry-After": "1"})
        except UserError as e:
            return error(400, str(e))
        except Exception as e:  # noqa: BLE001 - this batch failed; the server goes on
            return error(500, f"the model failed on this batch ({type(e).__name__}: {e})")
        finally:
            metrics.queue.set(batcher.waiting)
        return JSONResponse({"outputs": outputs})

    async def health(request: Request) -> Response:
        body = {"status": "ready" if state["ready"] else "stopping", **backend.describe(), "queue": batcher.waiting,
                "in_flight": state["in_flight"]}
        return JSONResponse(body, status_code=200 if state["ready"] else 503)

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def page(request: Request) -> Response:
        return HTMLResponse((resources.files("electra") / "serve" / "static" / "index.html").read_text("utf-8"))

    async def not_found(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 405:
            return error(405, f"{request.method} is not allowed on {request.url.path}")
        return error(exc.status_code, f"no route {request.url.path}; see GET /health for what this server serves")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        state["ready"] = True
        yield
        state["ready"] = False
        await batcher.stop()

    routes = [Route("/", page), Route("/health", health), Route("/metrics", prometheus)]
    routes += [Route(f"/v1/{e}", model_route, methods=["POST"]) for e in ("predict", "detect", "fill-mask", "embed")]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found})
    app.state.metrics, app.state.batcher = metrics, batcher
    return app


def run_server(app: Starlette, host: str, port: int) -> None:
    """Serve until SIGTERM or Ctrl-C: stop accepting, finish the requests in flight, return (exit 0).
    (uvicorn's own handler would raise the signal again once done, ending the process with it.)"""
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            old = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in old.items():
                    signal.signal(s, handler)

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)
    Server(config).run()


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def _read(request: Request, endpoint: str, backend: Backend, limits: Limits) -> tuple[list, dict]:
    """The request's inputs and options, checked; _Refused (400 or 413) says what is wrong."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise _Refused(413, f"the body has {int(declared):,} bytes; the limit is {limits.max_body_bytes:,}")
    body = await request.body()
    if len(body) > limits.max_body_bytes:
        raise _Refused(413, f"the body has {len(body):,} bytes; the limit is {limits.max_body_bytes:,}")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _Refused(400, f"the body is not valid JSON ({e})") from None
    except RecursionError:
        raise _Refused(400, "the body's JSON is nested too deeply") from None
    if not isinstance(data, dict) or "inputs" not in data:
        raise _Refused(400, 'the body must be a JSON object {"inputs": [...]}')
    inputs = data["inputs"]
    if not isinstance(inputs, list) or not inputs:
        raise _Refused(400, '"inputs" must be a non-empty list')
    if len(inputs) > limits.max_inputs:
        raise _Refused(413, f'"inputs" has {len(inputs)} items; the limit is {limits.max_inputs} per request')
    for n, item in enumerate(inputs):
        if _chars(item) > limits.max_text_chars:
            raise _Refused(413, f"input {n + 1} has {_chars(item):,} characters; the limit is {limits.max_text_chars:,}")
    if endpoint == "predict" and backend.model.task == "qa":  # ids by position in this request, not in the batch
        inputs = [{**item, "id": item.get("id", str(n))} if isinstance(item, dict) else item
                  for n, item in enumerate(inputs)]
    options = {k: v for k, v in data.items() if k != "inputs"}
    _check_options(endpoint, options, backend)
    try:
        _check_inputs(endpoint, inputs, backend)
    except UserError as e:
        raise _Refused(400, str(e)) from None
    return inputs, options


def _chars(item) -> int:
    if isinstance(item, str):
        return len(item)
    if isinstance(item, dict):
        return sum(_chars(v) for v in item.values())
    if isinstance(item, (list, tuple)):
        return sum(_chars(v) for v in item)
    return 0


def _check_options(endpoint: str, options: dict, backend: Backend) -> None:
    allowed = {"predict": {"top_k"}, "fill-mask": {"top_k"}, "embed": {"pooling"}, "detect": set()}[endpoint]
    unknown = set(options) - allowed
    if unknown:
        raise _Refused(400, f"unknown options {', '.join(sorted(unknown))} for /v1/{endpoint}"
                            + (f" (it takes {', '.join(sorted(allowed))})" if allowed else ""))
    top_k = options.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k <= 0):
        raise _Refused(400, f'"top_k" must be a positive integer (got {top_k!r})')
    if top_k is not None and endpoint == "predict" and backend.model.task != "classification":
        raise _Refused(400, f'"top_k" keeps the most likely labels of a classification model; this one does '
                            f"{backend.model.task}")
    if options.get("pooling", "mean") not in ("mean", "cls"):
        raise _Refused(400, f'"pooling" must be "mean" or "cls" (got {options["pooling"]!r})')


def _check_inputs(endpoint: str, inputs: list, backend: Backend) -> None:
    """What would fail inside a shared batch is refused here (UserError -> 400)."""
    model = backend.model
    if endpoint == "predict":
        examples = model.finetuned.task.examples_from(inputs)
        if model.text_count and len(examples[0].texts) != model.text_count:
            raise UserError(f"the model reads {'pairs of texts' if model.text_count == 2 else 'single texts'}; "
                            f"pass {'[text_a, text_b] pairs' if model.text_count == 2 else 'strings'}")
        return
    for n, item in enumerate(inputs):
        if not isinstance(item, str) or not item.strip():
            raise UserError(f"input {n + 1} must be a non-empty string")
        if endpoint == "fill-mask" and "[MASK]" not in item:
            raise UserError(f"input {n + 1} has no [MASK]; write [MASK] where a word should be predicted")
