"""Which model this replica serves: the promoted version, re-read from the database every few seconds.

Promotion is a database write, so every replica (however many) switches to a newly promoted
or rolled-back version within ``refresh_seconds`` without a restart. The check is done lazily
by whichever request finds the cached view stale, and never blocks other requests: they keep
serving the previous version while one thread re-reads. Parameters of a version never change,
so parsed models are cached by version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from autopack_estimator.model import ModelParameters, TokenModel
from autopack_estimator.store import Store

log = logging.getLogger(__name__)

DEFAULT_SUMMARY = "shipped default model"
_MODEL_CACHE_SIZE = 16


class UnknownModelVersion(LookupError):
    """No stored model version has this name."""


class ModelRegistry:
    """Cache of the promoted model, refreshed from the store."""

    def __init__(
        self,
        store: Store,
        refresh_seconds: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._cache_lock = threading.RLock()
        self._models: OrderedDict[str, TokenModel] = OrderedDict()
        default = ModelParameters.default()
        served = store.ensure_default_model(default.version, default.to_json(), DEFAULT_SUMMARY)
        self._models[default.version] = TokenModel(default)
        self._version = served
        self._model = self.model_for(served)
        self._checked_at = clock()

    @property
    def refresh_seconds(self) -> float:
        return self._refresh_seconds

    def current(self) -> tuple[str, TokenModel]:
        """The version served now and its model (at most ``refresh_seconds`` stale)."""
        if self._clock() - self._checked_at >= self._refresh_seconds and self._lock.acquire(blocking=False):
            try:
                self._refresh()
            finally:
                self._lock.release()
        return self._version, self._model

    def refresh(self) -> str:
        """Re-read the promoted version now (after a promotion made by this replica)."""
        with self._lock:
            self._refresh()
        return self._version

    def model_for(self, version: str) -> TokenModel:
        """The model of any stored version (candidates too), parsed once."""
        with self._cache_lock:
            cached = self._models.get(version)
            if cached is not None:
                self._models.move_to_end(version)
                return cached
            record = self._store.get_model(version)
            if record is None:
                raise UnknownModelVersion(version)
            model = TokenModel(ModelParameters.from_json(record.params_json))
            self._models[version] = model
            while len(self._models) > _MODEL_CACHE_SIZE:
                self._models.popitem(last=False)
            return model

    def _refresh(self) -> None:
        self._checked_at = self._clock()
        try:
            version = self._store.promoted_version()
            if version is None or version == self._version:
                return
            model = self.model_for(version)
        except Exception:
            # A database hiccup must not stop estimates: keep serving what we have.
            log.warning(
                "could not refresh the promoted model; still serving %s", self._version, exc_info=True
            )
            return
        log.info("now serving model %s (was %s)", version, self._version)
        self._version, self._model = version, model
