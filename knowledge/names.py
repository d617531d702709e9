"""The collection-name rule, in one place: the store, the settings and the API all check names with it.

ASCII letters, digits, '_' and '-', 1 to 100 of them: names appear in URLs, file names and SQL CHECKs, and
`str.isalnum` would let "café" through the settings only for the store to reject it later.
"""

from __future__ import annotations

import re

# A regex string (not only a compiled pattern) so that pydantic/FastAPI fields can use it as `pattern=`.
COLLECTION_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,100}$"
_COLLECTION_NAME = re.compile(COLLECTION_NAME_PATTERN)


def check_collection_name(name: str) -> str:
    """Return `name` if it is a valid collection name; raise ValueError saying what is allowed otherwise."""
    if not isinstance(name, str) or not _COLLECTION_NAME.fullmatch(name):
        raise ValueError(f"collection name {name!r} must be 1-100 ASCII letters, digits, '_' or '-'")
    return name
