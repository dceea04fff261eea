"""Platform sync on the SDK side: signed policy bundles, their disk cache, the trace spool.

These parts need no server to run and no extra to import (Ed25519 verification imports
`cryptography` when a public key is configured). The HTTP client that fetches bundles and
ships the spool builds on them.
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

__all__ = [
    "BundleVerificationError",
    "PolicyBundle",
    "PolicyCache",
    "SpoolFullError",
    "SpoolLockedError",
    "TraceSpool",
    "VerificationKeys",
    "sign_ed25519",
    "sign_hmac",
    "signature_header",
    "verify_bundle",
]
