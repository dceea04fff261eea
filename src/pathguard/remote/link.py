"""A Guard's link to the platform: policy sync, the trace queue, the spool and the shipper.

`Guard(api_url=...)` makes one `PlatformLink` and keeps its own code free of the platform:

- policies: a `PolicySync` thread fetches, verifies and caches the agent's bundle; each new
  set becomes the Guard's engine for tasks started from then on (`_policies_updated`). While
  no verified set was ever loaded and fail_mode is "closed", `no_policies` blocks every
  `step.*`.
- traces: the agent's thread puts each step on a `TraceWriter` queue; its thread builds the
  hash-chained records and appends them to the on-disk `TraceSpool`, which a `TraceShipper`
  thread empties into `POST /v1/traces`. Before each shipment the shipper drains the queue,
  so the records of a task that just ended go with it.

The trade-off of the queue: a process killed without warning (SIGKILL, a power cut) loses
the records still in memory, at most `trace_queue_size` of them; `guard.flush()` and
`guard.close()` drain the queue into the spool, and so does a normal interpreter exit.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pathguard.config import UNSET, Unset, default_cache_dir, env, env_int
from pathguard.decisions import Decision, Effect, Mode, Severity, Violation
from pathguard.engine import PolicyEngine
from pathguard.errors import ConfigurationError
from pathguard.policies import PolicySet
from pathguard.remote.bundle import VerificationKeys
from pathguard.remote.spool import TraceSpool
from pathguard.remote.sync import PolicySync, TraceShipper
from pathguard.remote.writer import AfterWrite, TraceWriter
from pathguard.vocabulary import Behavior

if TYPE_CHECKING:
    from pathguard.guard import Guard

__all__ = ["PlatformLink"]


class PlatformLink:
    """What a Guard with `api_url` runs in the background, and the state it reports.

    `initial_engine` is the Guard's engine before any platform set arrived (it holds no
    policies); `loaded` turns True when the first verified set is put in force. `writer` is
    None when `queue_size` is 0 (records are then written on the agent's thread).
    """

    def __init__(
        self,
        guard: Guard,
        api_url: str,
        api_key: str,
        *,
        cache_dir: str | Path | Unset | None = UNSET,
        policy_ttl: float | Unset = UNSET,
        queue_size: int | Unset = UNSET,
        after_write: AfterWrite | None = None,
    ) -> None:
        directory = env("CACHE_DIR") if isinstance(cache_dir, Unset) else cache_dir
        ttl = env_int("POLICY_TTL") if isinstance(policy_ttl, Unset) else policy_ttl
        if ttl is not None and ttl <= 0:
            raise ConfigurationError(
                f"policy_ttl (PATHGUARD_POLICY_TTL) must be more than 0 seconds, not {ttl}."
            )
        size = env_int("TRACE_QUEUE_SIZE") if isinstance(queue_size, Unset) else queue_size
        if size is not None and size < 0:
            raise ConfigurationError(
                f"trace_queue_size (PATHGUARD_TRACE_QUEUE_SIZE) must be 0 or more, not {size}."
            )
        self._guard = guard
        self.initial_engine = guard.engine
        self.loaded = False
        self._waited = False
        root = Path(directory) if directory else default_cache_dir(guard.agent_key)
        self.spool = TraceSpool(root / "spool")
        guard._sinks.append(self.spool)
        size = 10_000 if size is None else size
        self.writer = TraceWriter(guard._sinks, max_queue=size, after=after_write) if size else None
        self.trace_shipper = TraceShipper(api_url, api_key, self.spool, before=self.drain).start()
        self.policy_sync = PolicySync(
            api_url,
            api_key,
            guard.agent_key,
            cache_dir=root / "policies",
            keys=VerificationKeys.from_env(),
            ttl=300.0 if ttl is None else float(ttl),
            on_update=self._policies_updated,
        ).start()

    def __repr__(self) -> str:
        return f"PlatformLink({self.policy_sync.api_url!r}, state={self.policy_sync.state()!r})"

    # -- policies --------------------------------------------------------------------------------

    def _policies_updated(self, policy_set: PolicySet) -> None:
        """PolicySync's callback: a new engine for tasks started from now on."""
        guard = self._guard
        engine = PolicyEngine(policy_set, history_limit=guard.engine.history_limit)
        with guard._lock:
            if guard.registration is not None:
                engine.register(guard.registration)
            guard.engine = engine
            self.loaded = True

    def no_policies(self, behavior: Behavior) -> Decision | None:
        """With fail_mode "closed": the block of a `step.*` while no set was ever loaded."""
        if self.loaded or self._guard.fail_mode == "open":
            return None
        sync = self.policy_sync
        if not self._waited:
            # The first evaluation waits, at most the sync timeout, for the first bundle
            # (on_update swaps the engine before wait_first returns).
            self._waited = True
            sync.wait_first(sync.timeout)
            if self.loaded:
                return None
        if not behavior.step_type.value.startswith("step."):
            return None
        violation = Violation(
            policy_id="pathguard.no-policies",
            rule="fail_mode",
            severity=Severity.critical,
            effect=Effect.block,
            mode=Mode.enforce,
            reason="no verified policy set was loaded from the platform yet "
            f"({sync.status()['last_error'] or 'the first fetch is under way'}) and fail_mode "
            "is 'closed'",
        )
        return Decision.from_violations([violation], ())

    # -- traces ----------------------------------------------------------------------------------

    def drain(self) -> None:
        """Write the queued trace records to the spool (and the other sinks) now."""
        if self.writer is not None:
            self.writer.drain()

    def status(self) -> dict[str, Any]:
        """The sync state (see `Guard.status`)."""
        policies = self.policy_sync.status()
        traces = self.trace_shipper.status()
        traces["queued"] = 0 if self.writer is None else len(self.writer)
        return {
            "state": policies["state"],
            "fail_mode": self._guard.fail_mode,
            "policies": policies,
            "traces": traces,
        }

    def flush(self, timeout: float) -> bool:
        """Ship what is spooled (after `drain` and the sinks' flush) within `timeout`."""
        return self.trace_shipper.flush(timeout)

    def close(self, timeout: float) -> None:
        """Drain the queue and stop its thread, try a last shipment, stop the threads."""
        if self.writer is not None:
            self.writer.close()
        self.trace_shipper.flush(timeout)
        self.trace_shipper.close()
        self.policy_sync.stop()
