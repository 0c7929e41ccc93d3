"""The content hash on the wire: one rule for every service that names a text by its hash.

Edit operations carry `base_sha256` (builder → applier) and indexed workspaces carry
`content_sha256` (orchestrator → memory); both are the hex sha256 of the text's UTF-8 bytes.
"""

from __future__ import annotations

import hashlib


def text_sha256(text: str) -> str:
    """Hex sha256 of the UTF-8 bytes of `text`."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


EMPTY_TEXT_SHA256 = text_sha256("")
