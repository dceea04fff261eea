"""Background threads that talk to the platform: policy bundles in, trace records out.

`PolicySync` keeps the agent's policy set current: it loads the disk cache on start (so a cold
start works while the server is down), then fetches `GET /v1/agents/{key}/policies` with
`If-None-Match` every `ttl` seconds, verifies each new bundle, caches it and hands its
PolicySet to `on_update`. A bundle that fails verification is refused; the last good set stays.

`TraceShipper` empties a TraceSpool into `POST /v1/traces` in order: it reads a batch from the
spool's cursor, posts it, and acks it only on a 200. The server is idempotent on
(agent, task, seq) and answers re-sent records as `duplicates` in a 200, so a batch re-sent
after a crash between post and ack is acked then; nothing is lost or stored twice.

Neither class raises into the agent: network and server failures are logged (once per change
of state) and reported by `status()`; the agent's own threads never wait on the network
unless they call `wait_first` or `flush`, both bounded by a timeout.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Literal
from urllib.parse import quote

try:
    import httpx
except ImportError as exc:  # pragma: no cover - the dev environment has httpx
    raise ImportError(
        "Platform sync needs the httpx package; install it with pip install 'pathguard[server]'."
    ) from exc

from pathguard.errors import TraceIntegrityError
from pathguard.policies import PolicySet
from pathguard.remote.bundle import BundleVerificationError, PolicyBundle, VerificationKeys
from pathguard.remote.cache import PolicyCache
from pathguard.remote.spool import TraceSpool

__all__ = ["PolicySync", "SyncState", "TraceShipper"]

logger = logging.getLogger("pathguard")

SyncState = Literal["enforcing", "stale", "unavailable"]

_MAX_BATCH: Final = 1000  # the server's limit per POST /v1/traces


def _auth(api_key: str | None) -> dict[str, str]:
    return {} if not api_key else {"Authorization": f"Bearer {api_key}"}


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    return response.text[:200]


class PolicySync:
    """Keeps one agent's verified policy set current from the platform, in a daemon thread.

    `start()` loads the cache and starts the thread; `refresh()` fetches once in the calling
    thread; `status()` says whether the set in force is `enforcing` (the server confirmed it
    at the last check), `stale` (a set is loaded, but the last check failed or was refused)
    or `unavailable` (no verified set was ever loaded). After a failed check the next one
    comes after `retry_interval` seconds (default: the smaller of `ttl` and 10).
    """

    def __init__(
        self,
        api_url: str,
        api_key: str | None,
        agent_key: str,
        *,
        cache_dir: str | os.PathLike[str],
        keys: VerificationKeys | None = None,
        ttl: float = 300.0,
        timeout: float = 2.0,
        retry_interval: float | None = None,
        on_update: Callable[[PolicySet], None] | None = None,
    ) -> None:
        if ttl <= 0 or timeout <= 0:
            raise ValueError("ttl and timeout must be more than 0 seconds.")
        self.api_url = api_url.rstrip("/")
        self.agent_key = agent_key
        self.keys = keys or VerificationKeys()
        self.cache = PolicyCache(cache_dir, keys=self.keys)
        self.ttl = float(ttl)
        self.timeout = float(timeout)
        self.retry_interval = min(self.ttl, 10.0) if retry_interval is None else retry_interval
        self.on_update = on_update
        self._headers = _auth(api_key)
        self._url = f"{self.api_url}/v1/agents/{quote(agent_key, safe='')}/policies"
        self._lock = threading.Lock()  # the bundle and the status fields; one fetch at a time
        self._bundle: PolicyBundle | None = None
        self._source: Literal["server", "cache"] | None = None
        self._checked_ok = False
        self._last_error: str | None = None
        self._last_check: float | None = None
        self._logged: SyncState | None = None
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"PolicySync({self.api_url!r}, agent_key={self.agent_key!r})"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> PolicySync:
        """Load the cached bundle (if any verifies), then start fetching in the background."""
        if self._thread is not None:
            return self
        self.load_cache()
        self._thread = threading.Thread(
            target=self._run, name=f"pathguard-policy-sync-{self.agent_key}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the background thread (waits at most `timeout` seconds for it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> PolicySync:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            ok = self.refresh()
            self._stop.wait(self.ttl if ok else self.retry_interval)

    # -- what the agent sees ---------------------------------------------------------------

    @property
    def policy_set(self) -> PolicySet | None:
        """The verified set in force, or None when none was ever loaded."""
        bundle = self._bundle
        return None if bundle is None else bundle.policy_set

    def wait_first(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds for the first check; True when a set is in force."""
        self._first.wait(timeout)
        return self._bundle is not None

    def state(self) -> SyncState:
        """`enforcing`, `stale` or `unavailable` (see the class docstring)."""
        if self._bundle is None:
            return "unavailable"
        return "enforcing" if self._checked_ok else "stale"

    def status(self) -> dict[str, Any]:
        """The state plus details: etag, where the set came from, the last check and error."""
        with self._lock:
            bundle = self._bundle
            return {
                "state": self.state(),
                "etag": None if bundle is None else bundle.etag,
                "policy_set": None if bundle is None else bundle.policy_set.name,
                "policies": 0 if bundle is None else len(bundle.policy_set.policies),
                "source": self._source,
                "fetched_at": None if bundle is None else bundle.fetched_at,
                "last_check": self._last_check,
                "last_error": self._last_error,
            }

    # -- loading --------------------------------------------------------------------------

    def load_cache(self) -> bool:
        """Put the cached bundle in force if it verifies and nothing newer is; True if it did."""
        try:
            bundle = self.cache.load()
        except (BundleVerificationError, OSError) as exc:
            logger.error("policy cache refused: %s", exc)
            return False
        if bundle is None:
            return False
        with self._lock:
            if self._bundle is not None:
                return False
            self._install(bundle, "cache")
            self._log_state()
        return True

    def refresh(self) -> bool:
        """Check the server once, now; True when the server confirmed or replaced the set.

        Never raises: a failure is kept in `status()["last_error"]` and logged.
        """
        try:
            return self._refresh()
        except Exception as exc:  # the agent must never see a sync failure as an exception
            logger.exception("policy sync failed unexpectedly")
            with self._lock:
                self._fail(f"unexpected {type(exc).__name__}: {exc}")
            return False
        finally:
            self._first.set()

    def _refresh(self) -> bool:
        with self._lock:
            headers = dict(self._headers)
            if self._bundle is not None and self._bundle.etag is not None:
                headers["If-None-Match"] = self._bundle.etag
            self._last_check = time.time()
            try:
                response = httpx.get(self._url, headers=headers, timeout=self.timeout)
            except httpx.HTTPError as exc:
                self._fail(f"the platform at {self.api_url} is unreachable ({exc})")
                return False
            if response.status_code == 304 and self._bundle is not None:
                self._checked_ok = True
                self._last_error = None
                self._log_state()
                return True
            if response.status_code != 200:
                self._fail(f"GET {self._url} answered {response.status_code}: {_detail(response)}")
                return False
            try:
                bundle = PolicyBundle.verify(
                    response.content, response.headers, fetched_at=time.time(), keys=self.keys
                )
            except BundleVerificationError as exc:
                self._fail(f"the served bundle was refused: {exc}")
                return False
            try:
                self.cache.save(bundle)
            except OSError as exc:
                logger.warning("cannot write the policy cache %s: %s", self.cache.path, exc)
            self._install(bundle, "server")
            self._checked_ok = True
            self._last_error = None
            self._log_state()
            return True

    def _install(self, bundle: PolicyBundle, source: Literal["server", "cache"]) -> None:
        # Under self._lock. A 200 with the same body (e.g. after a lost ETag) changes nothing.
        previous = self._bundle
        self._bundle = bundle
        self._source = source
        if previous is not None and previous.body == bundle.body:
            return
        logger.info(
            "policy set %r (%s, %d policies) loaded from the %s",
            bundle.policy_set.name,
            bundle.etag,
            len(bundle.policy_set.policies),
            source,
        )
        if self.on_update is not None:
            try:
                self.on_update(bundle.policy_set)
            except Exception:
                logger.exception("the on_update callback of the policy sync failed")

    def _fail(self, error: str) -> None:
        # Under self._lock.
        self._checked_ok = False
        changed = error != self._last_error
        self._last_error = error
        if changed and self._logged is not None and self._logged == self.state():
            logger.debug("policy sync: %s", error)
        self._log_state()

    def _log_state(self) -> None:
        # Under self._lock: log once per change of state, not once per check.
        state = self.state()
        if state == self._logged:
            return
        self._logged = state
        if state == "enforcing":
            logger.info("policy sync for %r: enforcing the server's policy set", self.agent_key)
        elif state == "stale":
            logger.warning(
                "policy sync for %r: stale, enforcing the last good policy set (%s)",
                self.agent_key,
                self._last_error or "not yet confirmed by the server",
            )
        else:
            logger.error(
                "policy sync for %r: unavailable, no verified policy set loaded (%s)",
                self.agent_key,
                self._last_error,
            )


class TraceShipper:
    """Ships a TraceSpool's records to `POST /v1/traces`, in order, from a daemon thread.

    It ships every `interval` seconds and whenever `wake()` or `flush()` asks. While the
    server is unreachable or answers with an error it backs off (doubling up to
    `max_backoff`); records stay in the spool. A batch the server refuses for good (400 or
    409: it does not continue the stored chain) is not skipped: it blocks the spool, is
    retried at `max_backoff` and is reported in `status()`, so no record is ever dropped
    silently. The spool itself belongs to the caller (`close()` does not close it).
    `before`, when given, is called before each shipment and at the start of `flush` (a
    Guard drains its in-memory trace queue into the spool there).
    """

    def __init__(
        self,
        api_url: str,
        api_key: str | None,
        spool: TraceSpool,
        *,
        interval: float = 1.0,
        batch: int = 500,
        timeout: float = 5.0,
        max_backoff: float = 30.0,
        before: Callable[[], None] | None = None,
    ) -> None:
        if not 1 <= batch <= _MAX_BATCH:
            raise ValueError(f"batch must be between 1 and {_MAX_BATCH} records.")
        if interval <= 0 or timeout <= 0 or max_backoff <= 0:
            raise ValueError("interval, timeout and max_backoff must be more than 0 seconds.")
        self.api_url = api_url.rstrip("/")
        self.spool = spool
        self.interval = float(interval)
        self.batch = batch
        self.timeout = float(timeout)
        self.max_backoff = float(max_backoff)
        self.before = before
        self._headers = _auth(api_key)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self._ship_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._backoff = 0.0
        self._shipped = 0
        self._attempts = 0  # attempts finished
        self._started = 0  # attempts begun
        self._last_error: str | None = None
        self._failing = False

    def __repr__(self) -> str:
        return f"TraceShipper({self.api_url!r}, {self.spool!r})"

    def start(self) -> TraceShipper:
        """Start the background thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="pathguard-trace-shipper", daemon=True
            )
            self._thread.start()
        return self

    def wake(self) -> None:
        """Ask for a shipment now (does not wait; safe from the agent's hot path)."""
        self._backoff = 0.0
        self._wake.set()

    def flush(self, timeout: float = 5.0) -> bool:
        """Ship what is spooled now and wait at most `timeout` seconds; True when all arrived.

        Without a running thread the shipment happens in the calling thread.
        """
        self._before()
        target = self.spool.end
        if self._thread is None or not self._thread.is_alive():
            self.ship_pending()
            return self.spool.acked >= target
        deadline = time.monotonic() + timeout
        with self._progress:
            # Attempts are numbered as they start; the first one started after our wake is
            # the first whose failure says the server is not taking records now. An attempt
            # already under way when we woke the thread may fail for reasons that are past.
            first_new = self._started + 1
            self.wake()
            while self.spool.acked < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if self._attempts >= first_new and self._failing:
                    return False
                self._progress.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop the background thread (waits at most `timeout` seconds; safe to call twice)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> TraceShipper:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def status(self) -> dict[str, Any]:
        """Records waiting and shipped, whether shipping fails now, and the last error."""
        return {
            "state": "failing" if self._failing else "ok",
            "pending": len(self.spool),
            "shipped": self._shipped,
            "backoff": self._backoff,
            "last_error": self._last_error,
        }

    def _run(self) -> None:
        with httpx.Client(headers=self._headers, timeout=self.timeout) as client:
            while not self._stop.is_set():
                self._ship(client)
                self._wake.wait(self._backoff or self.interval)
                self._wake.clear()

    def ship_pending(self) -> bool:
        """Ship everything pending now, in the calling thread; True when the spool is empty."""
        with httpx.Client(headers=self._headers, timeout=self.timeout) as client:
            return self._ship(client)

    def _ship(self, client: httpx.Client) -> bool:
        with self._ship_lock:
            with self._progress:
                self._started += 1
            self._before()
            try:
                ok = self._ship_all(client)
            except Exception as exc:  # never let the thread die; report and back off
                logger.exception("trace shipping failed unexpectedly")
                ok = self._failed(f"unexpected {type(exc).__name__}: {exc}", permanent=False)
        with self._progress:
            self._attempts += 1
            self._progress.notify_all()
        return ok

    def _before(self) -> None:
        if self.before is not None:
            try:
                self.before()
            except Exception:  # ship what is spooled even so
                logger.exception("the before-shipment hook of the trace shipper failed")

    def _ship_all(self, client: httpx.Client) -> bool:
        size = self.batch
        while True:
            start = self.spool.acked
            try:
                records = self.spool.pending(size)
            except TraceIntegrityError as exc:
                return self._failed(str(exc), permanent=True)
            if not records:
                self._succeeded()
                return True
            payload = {"records": [r.to_dict() for r in records]}
            try:
                response = client.post(f"{self.api_url}/v1/traces", json=payload)
            except httpx.HTTPError as exc:
                return self._failed(
                    f"the platform at {self.api_url} is unreachable ({exc})", permanent=False
                )
            if response.status_code == 200:
                self.spool.ack(start + len(records))
                self._shipped += len(records)
                with self._progress:
                    self._progress.notify_all()
                size = self.batch
                continue
            if response.status_code == 413 and size > 1:
                size = max(1, size // 2)  # too many bytes: the same records in smaller batches
                continue
            permanent = response.status_code in (400, 409, 413)
            return self._failed(
                f"POST /v1/traces answered {response.status_code} for spool positions "
                f"{start} to {start + len(records) - 1}: {_detail(response)}",
                permanent=permanent,
            )

    def _succeeded(self) -> None:
        if self._failing:
            logger.info("trace shipping to %s works again", self.api_url)
        self._failing = False
        self._last_error = None
        self._backoff = 0.0

    def _failed(self, error: str, *, permanent: bool) -> bool:
        if not self._failing or error.split(":")[0] != (self._last_error or "").split(":")[0]:
            log = logger.error if permanent else logger.warning
            log("trace shipping stopped, records stay in the spool: %s", error)
        self._failing = True
        self._last_error = error
        if permanent:
            self._backoff = self.max_backoff
        else:
            self._backoff = min(self.max_backoff, max(self.interval, self._backoff * 2 or 0.5))
        return False
