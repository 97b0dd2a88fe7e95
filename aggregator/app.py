"""`make_app(config)`: the aggregator's routes, its error middleware, and the store's lifetime."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from aggregator.compaction import Compactor
from aggregator.config import AggregatorConfig
from aggregator.errors import (
    RETRY_AFTER_STATUSES,
    AggregatorError,
    BodyTimeout,
    Draining,
    StoreError,
    code_of_status,
    error_response,
    http_answer,
)
from aggregator.finalize.handler import FinalizeHandler
from aggregator.finalize.job import FinalizeBudget
from aggregator.finalize.worker import FinalizeWorker
from aggregator.ingest import IngestHandler
from aggregator.logfilter import install as install_log_filter
from aggregator.logfilter import job_id_field, method_field
from aggregator.logs_api import add_read_routes
from aggregator.metrics import Metrics
from aggregator.openapi import OPENAPI_PATH, openapi_document
from aggregator.storage import Store, open_store
from aggregator.storage.phase import CountingStore, storage_phase
from blastlogs.protocol import FINALIZE_PATH, INGEST_PATH

log = logging.getLogger("aggregator.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Probes and scrapes are frequent and uninteresting; their successes are logged at debug.
#: Successful requests to these are logged at DEBUG: probes, scrapes, and ingest, which comes at
#: batch rate and is counted by the metrics (its failures stay at INFO and above).
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics", "/v1/ingest"})
#: The garbage collector's first threshold while serving. Python's default (700) is below what one
#: 1,000-event batch keeps alive while it is checked and staged (a few thousand tuples), so every
#: ingest paid several young collections that found nothing to free (about 0.4 ms per batch).
GC_GEN0_THRESHOLD = 20_000
#: The largest header value accepted (aiohttp's default is 8,190): a follow's resume id for ~3,800 streams.
MAX_FIELD_SIZE = 64 * 1024


@dataclass
class Runtime:
    """What lives as long as the app: the open store and whether we are draining."""

    store: Store | None = None
    draining: bool = False

    def get_store(self) -> Store:
        if self.store is None:
            raise StoreError("the store is not open (starting up or shutting down)")
        return self.store


RUNTIME = web.AppKey("runtime", Runtime)
METRICS = web.AppKey("metrics", Metrics)
CONFIG = web.AppKey("config", AggregatorConfig)


def make_app(config: AggregatorConfig, *, store: Store | None = None) -> web.Application:
    """The service. `store` (tests) replaces the one `config.store_url` names; the app closes it either way."""
    metrics = Metrics()
    runtime = Runtime()
    install_log_filter()  # aiohttp's own records of malformed requests quote them: not in our log
    # We inflate gzip bodies ourselves, with a cap on the inflated size; idle connections are closed. A
    # follow's Last-Event-ID holds every stream's mark (about 17 bytes each): headers up to MAX_FIELD_SIZE.
    app = web.Application(middlewares=[_middleware(metrics, config)],
                          handler_args={"auto_decompress": False, "keepalive_timeout": config.idle_timeout,
                                        "max_field_size": MAX_FIELD_SIZE})
    app[RUNTIME] = runtime
    app[METRICS] = metrics
    app[CONFIG] = config

    async def store_ctx(_app: web.Application) -> AsyncIterator[None]:
        opened = store or configured_store(config)
        runtime.store = CountingStore(opened, metrics.storage_operations)
        log.info("store opened", extra={"fields": {"store": _describe_store(config.store_url)}})
        try:
            yield
        finally:
            runtime.store = None
            await opened.close()

    async def on_shutdown(_app: web.Application) -> None:
        runtime.draining = True

    budget = FinalizeBudget()  # every finalize and compaction of this replica draws on it
    # A given store (tests) cannot cross into a child process: its finalizes run here. With a child, the
    # compactions run there too, on the child's budget (one per replica) and CPU.
    worker = FinalizeWorker(config, metrics) if store is None and config.finalize_process == "child" else None
    compactor = Compactor(config, metrics, runtime.get_store, budget.reads,
                          runner=worker.compact if worker is not None else None)

    async def worker_ctx(_app: web.Application) -> AsyncIterator[None]:
        if worker is None:
            yield
            return
        await worker.start()
        try:
            yield
        finally:
            await worker.close()

    async def compactor_ctx(_app: web.Application) -> AsyncIterator[None]:
        # last in: its compactions settle before the child that runs them stops and before the store closes
        async with compactor.running():
            yield

    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(worker_ctx)
    app.cleanup_ctx.append(compactor_ctx)
    app.on_startup.append(_raise_gc_threshold)
    app.on_shutdown.append(on_shutdown)

    async def healthz(_request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        if runtime.draining:
            raise Draining("shutting down")
        try:
            await runtime.get_store().ping()
        except StoreError as e:
            metrics.storage_errors.labels("ping").inc()
            log.warning("readiness: storage unreachable", extra={"fields": {"error": str(e)}})
            raise StoreError(str(e), detail="storage is unreachable") from None
        return _json({"status": "ready"})

    async def metrics_route(_request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        return resp

    app.router.add_post(INGEST_PATH, IngestHandler(config, metrics, runtime.get_store, compactor))
    app.router.add_post(FINALIZE_PATH, FinalizeHandler(config, metrics, runtime.get_store, budget, worker))
    add_read_routes(app, config, runtime.get_store, lambda: runtime.draining)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_route)
    openapi_body = orjson.dumps(openapi_document(config))

    async def openapi_route(_request: web.Request) -> web.Response:
        return web.Response(body=openapi_body, content_type="application/json")

    app.router.add_get(OPENAPI_PATH, openapi_route)
    return app


def configured_store(config: AggregatorConfig) -> Store:
    """The store `BLAST_LOGS_STORE` and its Azure settings name (the service's, and its finalize child's)."""
    return open_store(config.store_url, azure_account_url=config.azure_account_url,
                      azure_connection_string=config.azure_connection_string)


async def _raise_gc_threshold(_app: web.Application) -> None:
    raise_gc_threshold()


def raise_gc_threshold() -> None:
    """Young collections per GC_GEN0_THRESHOLD allocations, not per Python's default 700 (process-wide)."""
    gen0, gen1, gen2 = gc.get_threshold()
    if 0 < gen0 < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def start_draining(app: web.Application) -> None:
    """Make /readyz answer 503 so load balancers stop sending work, while requests are still served."""
    app[RUNTIME].draining = True


def _json(doc: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json")


def _describe_store(url: str) -> str:
    # The store URL holds no credentials (those come from their own variables), but keep only its scheme
    # and path-ish part in case someone put a query string with a SAS token in it.
    return url.split("?", 1)[0]


def _middleware(metrics: Metrics, config: AggregatorConfig) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every error as JSON (never internals), and one metric and log line per request."""
        started = time.monotonic()
        storage_phase.set("read" if request.method == "GET" else "other")  # ingest and finalize set theirs
        resp: web.StreamResponse
        try:
            resp = await _within_body_deadline(request, handler, config.body_timeout)
        except AggregatorError as e:
            resp = _answer(e, config.retry_after) or _internal_error(request)
        except web.HTTPException as e:
            resp = error_response(e.status, code_of_status(e.status), e.reason)
            if "Allow" in e.headers:
                resp.headers["Allow"] = e.headers["Allow"]
        except asyncio.CancelledError:
            raise
        except Exception:
            resp = _internal_error(request)
        if resp.status == 408 and request.transport is not None:
            # The rest of a trickled body is not worth reading: answer, then close at once (aiohttp would
            # otherwise keep reading it for up to its lingering time).
            resp.force_close()
            await resp.prepare(request)
            await resp.write_eof()
            request.transport.close()
        route = _route(request)
        metrics.requests.labels(route, str(resp.status)).inc()
        level = logging.DEBUG if route in QUIET_ROUTES and resp.status < 400 else logging.INFO
        if log.isEnabledFor(level):
            # Only values we chose: nothing the client sent is logged raw (aggregator/logfilter.py).
            fields: dict[str, object] = {"method": method_field(request.method), "route": route,
                                         "status": resp.status, "ms": round((time.monotonic() - started) * 1000, 1)}
            job_id = job_id_field(request.match_info.get("job_id"), resp.status)
            if job_id is not None:
                fields["job_id"] = job_id
            log.log(level, "request", extra={"fields": fields})
        return resp

    return middleware


def _answer(e: AggregatorError, retry_after: int) -> web.Response | None:
    """The answer `HTTP_ANSWERS` gives for `e`; None for an error that is no answer (a bug)."""
    answer = http_answer(type(e))
    if answer is None:
        return None
    status, code = answer
    return error_response(status, code, e.detail,
                          retry_after=retry_after if status in RETRY_AFTER_STATUSES else None)


def _internal_error(request: web.Request) -> web.Response:
    """Log the exception being handled; the client learns nothing of it."""
    log.exception("unhandled error", extra={"fields": {"method": method_field(request.method),
                                                       "route": _route(request)}})
    return error_response(500, "internal", "internal error")


async def _within_body_deadline(request: web.Request, handler: Handler, seconds: float) -> web.StreamResponse:
    """The handler's answer, or 408 when the request body has not fully arrived `seconds` after its headers.

    aiohttp's server has no body read timeout; without one a client trickling its body holds an ingest
    slot and a connection for as long as it likes. Once the body is in, the handler runs unbounded
    (finalize may legitimately wait minutes).
    """
    loop = asyncio.get_running_loop()
    deadline = asyncio.timeout(None)

    def check() -> None:
        if not request.content.is_eof():
            deadline.reschedule(loop.time())

    timer = loop.call_later(seconds, check)
    try:
        async with deadline:
            return await handler(request)
    except TimeoutError:
        if deadline.expired():
            raise BodyTimeout(f"the request body did not arrive within {seconds:g} s") from None
        raise
    finally:
        timer.cancel()


def _route(request: web.Request) -> str:
    """The route's template (bounded label values), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"
