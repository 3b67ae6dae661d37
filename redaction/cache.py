"""An LRU of analysis results keyed by a keyed hash of the analysed text.

IDEs resend overlapping windows of the same file, and the served text comes back in
events; analysing each once saves most of the NER cost. Keys are HMACs under a key
derived from the deployment key, so the cache holds neither text nor a plain hash of it
(a plain hash of a short secret can be brute-forced). Values are offsets and entity
types only.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class KeyedCache(Generic[V]):
    def __init__(self, key: bytes, max_entries: int) -> None:
        cache_key = hmac.new(key, b"gristmill/redaction/cache", hashlib.sha256).digest()
        self._mac = hmac.new(cache_key, digestmod=hashlib.sha256)
        self._entries: OrderedDict[bytes, V] = OrderedDict()
        self._max = max_entries
        self.hits = 0
        self.misses = 0

    def key(self, *parts: str) -> bytes:
        """A cache key for the parts, length-prefixed so ('ab','c') != ('a','bc')."""
        mac = self._mac.copy()
        for part in parts:
            data = part.encode("utf-8", "surrogatepass")
            mac.update(len(data).to_bytes(8, "big"))
            mac.update(data)
        return mac.digest()[:16]

    def get(self, key: bytes) -> V | None:
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: bytes, value: V) -> None:
        if self._max <= 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
