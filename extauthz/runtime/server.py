"""`extauthz serve`: the gRPC Authorization service and the standard health service.

Lifecycle, top to bottom: build the store and authorizer → load the policy once → start the
gRPC server and the policy watcher → wait for SIGTERM/SIGINT (the handler only sets a flag)
→ report NOT_SERVING, stop accepting, drain in-flight calls for `shutdown_grace` seconds →
stop the watcher, close Redis.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extauthz.config import Settings, otlp_target, span_batching
from extauthz.core.llm import MAX_BODY_BYTES
from extauthz.core.prices import NO_PRICES, PriceTable
from extauthz.errors import ConfigError
from extauthz.runtime import tls
from extauthz.runtime.alerts import budget_hook, webhooks_for
from extauthz.runtime.auth_failures import FailureLimiter
from extauthz.runtime.authorizer import Authorizer
from extauthz.runtime.envoy_check import CheckHandler, check_handler, check_input_reader
from extauthz.runtime.ext_proc import UsageProcessor
from extauthz.runtime.jwks import JwksCache
from extauthz.runtime.limiter import Limiter
from extauthz.runtime.metrics import Metrics
from extauthz.runtime.policy_watcher import PolicyWatcher
from extauthz.runtime.tickets import Tickets
from extauthz.runtime.tracing import Tracing
from extauthz.runtime.usage import UsageMeter
from extauthz.runtime.usage_records import UsageRecords
from extauthz.storage.invalidation import InvalidationListener
from extauthz.storage.redis_health import RedisHealth
from extauthz.storage.store import open_store
from extauthz.storage.token_cache import TokenCache

log = logging.getLogger("extauthz.server")

DISABLED_WARNING_INTERVAL = 60.0  # seconds between --disable-auth warnings

AUTHORIZATION_SERVICE = "envoy.service.auth.v3.Authorization"
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
# SERVING from start to shutdown, whatever Redis does: for liveness probes (a Redis outage
# must make pods unready, not restart them); "" and AUTHORIZATION_SERVICE follow Redis
LIVENESS_SERVICE = "extauthz.liveness"
MAX_CHECK_REQUEST_BYTES = MAX_BODY_BYTES + (256 << 10)  # an LLM body, headers, attributes


def authorization_service(
    check: CheckHandler, read: Callable[[bytes], Any]
) -> grpc.GenericRpcHandler:
    """The Check method: requests read by `read` (the server's: `check_input_reader`),
    responses sent as the bytes returned."""
    return grpc.method_handlers_generic_handler(
        AUTHORIZATION_SERVICE,
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check,
                request_deserializer=read,
                response_serializer=bytes,
            )
        },
    )


class Server:
    """One extauthz server process."""

    def __init__(
        self,
        settings: Settings,
        reuse_port: bool = False,
        check: CheckHandler | None = None,
        read: Callable[[bytes], Any] | None = None,
    ) -> None:
        """`check` and `read` replace the Check handler and its request reader (bench/
        measures an empty handler on a plain parse)."""
        self.settings = settings
        self.store = open_store(settings.redis_url, settings.key_prefix, settings.redis_timeout)
        self.redis = RedisHealth()  # one view of Redis: cache trust, health, metrics
        self.jwks = JwksCache(refresh=settings.jwks_refresh, min_refetch=settings.jwks_min_refetch)
        self.cache = (
            TokenCache(
                self.store.token_record,
                ttl=settings.cache_ttl,
                stale_grace=settings.stale_grace,
                health=self.redis,
                fetch_team=self.store.team_record,
            )
            if settings.cache_ttl > 0
            else None
        )
        self.metrics = Metrics()
        self.store.observe = self.metrics.redis_call
        self.usage = (
            UsageMeter(self.store, settings.usage_flush, settings.usage_retention_days)
            if settings.usage_flush > 0
            else None
        )
        self.webhooks = webhooks_for(settings, self.store)  # (None without --webhook-url)
        self.limiter = Limiter(
            self.store, settings.rate_limit_on_error, on_total=budget_hook(self.webhooks)
        )
        self.tickets = Tickets(self.store)
        self.processor: UsageProcessor | None = None  # (LLM responses: ext_proc, access log)
        self.authorizer = self._authorizer()
        # --otlp-endpoint: spans (runtime/tracing.py); without it no tracing code runs
        self.tracing = (
            Tracing(
                otlp_target(settings.otlp_endpoint),
                dropped=self.metrics.spans_dropped,
                batching=span_batching(os.environ),
            )
            if settings.otlp_endpoint
            else None
        )
        self.watcher = PolicyWatcher(
            self.authorizer, settings.policy_refresh, self.redis, self._on_poll
        )
        self.metrics.watch(self._state)
        if self.webhooks is not None:
            self.metrics.registry.register(self.webhooks)
        self.serving = False
        self._warned_disabled_at = 0.0
        self.listener = (
            InvalidationListener(settings.redis_url, self.store, self.cache, self.watcher.poll)
            if self.cache is not None
            else None
        )
        self.health = health.HealthServicer()
        if check is None and self.tracing is not None:
            check = self.tracing.check_handler(self.authorizer)
        self.grpc_server = self._grpc_server(
            reuse_port,
            check or check_handler(self.authorizer),
            read or check_input_reader(settings.route_identity),
        )
        self.port = 0
        self.tls: tls.ServerTls | None = None
        self._stopping = threading.Event()

    def _authorizer(self) -> Authorizer:
        settings = self.settings
        return Authorizer(
            self.store,
            self.jwks,
            self.cache,
            metrics=self.metrics,
            disable_auth=settings.disable_auth,
            failures=FailureLimiter(settings.auth_failure_rate, settings.auth_failure_burst)
            if settings.auth_failure_burst > 0
            else None,
            limiter=self.limiter,
            usage=self.usage,
            tickets=self.tickets,
        )

    def _prices(self) -> PriceTable:
        """The model prices of the policy this process decides with (usage in dollars)."""
        snapshot = self.authorizer.snapshot
        return snapshot.prices if snapshot is not None else NO_PRICES

    def _grpc_server(
        self, reuse_port: bool, check: CheckHandler, read: Callable[[bytes], Any]
    ) -> grpc.Server:
        server = grpc.server(
            # Check's threads, and one more per LLM response counted at once (ext_proc)
            futures.ThreadPoolExecutor(
                max_workers=self.settings.threads + self.settings.ext_proc_streams,
                thread_name_prefix="check",
            ),
            # with several workers every process binds the port; otherwise a busy port
            # must be an error, not a silent share with some other server
            options=[
                ("grpc.so_reuseport", int(reuse_port)),
                # headers, and on LLM routes the body (at most MAX_BODY_BYTES)
                ("grpc.max_receive_message_length", MAX_CHECK_REQUEST_BYTES),
            ],
        )
        server.add_generic_rpc_handlers((authorization_service(check, read),))
        if self.settings.ext_proc_streams > 0:
            self.processor = processor = UsageProcessor(
                self.usage,
                self.metrics,
                self.settings.ext_proc_streams,
                limiter=self.limiter,
                tickets=self.tickets,
                prices=self._prices,
            )
            if self.tracing is not None:
                processor.on_charge = self.tracing.charged
            external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(processor, server)
            # (Envoy's access log: one record per LLM response its Lua filter read)
            als_pb2_grpc.add_AccessLogServiceServicer_to_server(UsageRecords(processor), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        return server

    def start(self) -> None:
        listen = self.settings.listen
        self.tls = tls.for_server(self.settings)  # (reloaded at handshakes when renewed)
        try:
            if self.tls is not None:
                self.port = self.grpc_server.add_secure_port(listen, self.tls.credentials())
            else:
                self.port = self.grpc_server.add_insecure_port(listen)
        except RuntimeError as e:
            raise ConfigError(f"cannot listen on {self.settings.listen}: {e}") from e
        if self.port == 0:
            raise ConfigError(f"cannot listen on {self.settings.listen} (in use or invalid)")
        if self.settings.metrics_listen:
            listen = self.settings.metrics_listen  # (a worker's own: see supervisor.py)
            try:
                self.metrics.serve(listen)
            except OSError as e:
                raise ConfigError(f"cannot serve metrics on {listen}: {e}") from e
        self._warn_if_disabled()
        self.jwks.start()
        self.watcher.start()
        # the policy's key sets fetched once before Envoy is told to send Checks (a bounded
        # wait: an IdP down or slow leaves its routes answering 503 until they come)
        waiting = self.jwks.first_fetches(self.jwks.fetch_timeout + 0.5)
        if waiting:
            log.warning(
                "JWKS not fetched yet from %s: their routes answer 503 until they are",
                ", ".join(waiting),
            )
        if self.webhooks is not None:
            self.webhooks.start()
        if self.listener is not None:
            self.listener.start()
        self.grpc_server.start()
        self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self._set_serving(True)
        mode = "plaintext"
        if self.settings.tls_cert:
            mode = "mutual TLS" if self.settings.tls_client_ca else "TLS, no client certificates"
            if not self.settings.tls_client_ca:
                log.warning(
                    "--tls-cert without --tls-client-ca: anyone who reaches %s can ask for "
                    "decisions (and learn which tokens are valid); give the CA of Envoy's "
                    "client certificate",
                    self.settings.listen,
                )
        log.info(
            "listening on %s (%s; redis %s, prefix %r, %d threads)",
            self.settings.listen,
            mode,
            self.settings.redis_url_redacted,
            self.settings.key_prefix,
            self.settings.threads,
        )

    def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", AUTHORIZATION_SERVICE, EXT_PROC_SERVICE):
            self.health.set(service, status)
        self.serving = serving

    def _on_poll(self) -> None:
        """After every policy poll: health follows Redis, with `unhealthy_after` of patience;
        usage counted since the last flush goes to Redis every `usage_flush` seconds."""
        if self.usage is not None:
            self.usage.maybe_flush()
        self.limiter.sync(time.time())
        now = time.monotonic()
        if self.redis.store_ok:
            if not self.serving and not self._stopping.is_set():
                log.info("Redis is back: health SERVING")
                self._set_serving(True)
        else:
            down_for = self.redis.down_for()
            if self.serving and down_for >= self.settings.unhealthy_after:
                log.warning("Redis unreachable for %.0fs: health NOT_SERVING", down_for)
                self._set_serving(False)
        if now - self._warned_disabled_at >= DISABLED_WARNING_INTERVAL:
            self._warn_if_disabled()

    def _warn_if_disabled(self) -> None:
        if self.settings.disable_auth:
            self._warned_disabled_at = time.monotonic()
            log.warning(
                "AUTHENTICATION IS DISABLED (--disable-auth): every request is allowed. "
                "For local use only."
            )

    def _state(self) -> dict[str, Any]:
        stats = self.cache.stats if self.cache is not None else None
        version = self.authorizer.policy_version
        return {
            "policy_version": version.version if version is not None else 0,
            "redis_up": int(self.redis.store_ok),
            "auth_disabled": int(self.settings.disable_auth),
            "serving": int(self.serving),
            "cache": {
                "hit": stats.hits if stats else 0,
                "miss": stats.misses if stats else 0,
                "eviction": stats.evictions if stats else 0,
                "invalidation": stats.invalidations if stats else 0,
                "decision_reused": self.authorizer.reused,
            },
            "cache_entries": len(self.cache) if self.cache is not None else 0,
            "jwks": {"ok": self.jwks.fetches_ok, "failed": self.jwks.fetches_failed},
            "tls": None
            if self.tls is None
            else {"expiry": self.tls.files.not_after, "reloads": self.tls.reloads},
        }

    def request_stop(self) -> None:
        """Signal-safe: only sets a flag."""
        self._stopping.set()

    def wait(self) -> None:
        # wait() with a timeout so that signal handlers run promptly on the main thread
        while not self._stopping.wait(0.5):
            pass

    def stop(self) -> None:
        log.info("shutting down: draining for up to %.1fs", self.settings.shutdown_grace)
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(self.settings.shutdown_grace).wait()
        self.watcher.stop()
        if self.processor is not None and self.processor.claims is not None:
            self.processor.claims.stop()  # (records waiting for their claim: counted)
        if self.usage is not None:
            self.usage.flush()  # nothing counted is lost on SIGTERM
        self.limiter.sync(time.time(), final=True)  # debts paid, budgets given back
        if self.webhooks is not None:
            self.webhooks.stop()  # (what the outbox holds goes to Redis)
        if self.listener is not None:
            self.listener.stop()
        self.jwks.stop()
        self.store.close()
        if self.tracing is not None:
            self.tracing.shutdown()  # (the spans not yet exported)
        log.info("stopped")


def serve(settings: Settings, reuse_port: bool = False) -> None:
    """Run a server in the foreground until SIGTERM or SIGINT."""
    server = Server(settings, reuse_port)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signo, _frame: server.request_stop())
    server.start()
    try:
        server.wait()
    finally:
        server.stop()
