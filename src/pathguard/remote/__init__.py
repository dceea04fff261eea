"""Platform sync on the SDK side: signed policy bundles, their disk cache, the trace spool
and the trace writer that fills it.

These parts need no server to run and no extra to import (Ed25519 verification imports
`cryptography` when a public key is configured). The modules that use httpx build on them
and are imported only when a Guard needs them: `sync` (fetches bundles, ships the spool),
`link` (what `Guard(api_url=...)` runs) and `webhook` (`Guard(incident_webhook=...)`).
"""

from __future__ import annotations

from pathguard.remote.bundle import (
    BundleVerificationError,
    PolicyBundle,
    VerificationKeys,
    sign_ed25519,
    sign_hmac,
    signature_header,
    verify_bundle,
)
from pathguard.remote.cache import PolicyCache
from pathguard.remote.spool import SpoolFullError, SpoolLockedError, TraceSpool
from pathguard.remote.writer import TraceWriter

__all__ = [
    "BundleVerificationError",
    "PolicyBundle",
    "PolicyCache",
    "SpoolFullError",
    "SpoolLockedError",
    "TraceSpool",
    "TraceWriter",
    "VerificationKeys",
    "sign_ed25519",
    "sign_hmac",
    "signature_header",
    "verify_bundle",
]
