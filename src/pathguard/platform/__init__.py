"""The self-hosted platform: storage (SQLAlchemy + Alembic), API keys, and the HTTP API.

Importing this package without the server extra raises an ImportError that names
`pip install 'pathguard[server]'`.
"""

from __future__ import annotations

from pathguard.platform import _extra

_extra.require_server_extra()
