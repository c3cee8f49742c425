"""Following the registry: the ``champion`` alias is checked every ``reload_s`` (in a thread
of its own, so a slow registry never delays scoring); when it moves (promotion or
rollback) the new version is loaded and swapped in without a restart; when the registry
is unreachable the last good model keeps serving, ``didact_registry_up`` is 0, a warning
is logged and the check is retried with exponential backoff."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from didact_core.config import Settings
from didact_core.errors import DidactError, RegistryError
from didact_core.learn.centroids import centroids_of
from didact_core.learn.registry import CHAMPION, ModelRegistry
from didact_core.serve.metrics import ServingMetrics
from didact_core.serve.model import LoadedModel, model_facts, short_error
from didact_core.serve.options import DEFAULT_RELOAD_S

log = logging.getLogger(__name__)

#: longest wait between two registry checks while it is unreachable (and at most 10 × reload_s)
MAX_BACKOFF_S = 60.0


class ModelWatcher:
    """Follows the registry's ``champion`` alias; keeps the last good model when it cannot.

    :meth:`check` is one look (returns True when it switched models); :meth:`due` says
    whether the next look is due (every ``reload_s``; after failures, exponential backoff
    up to :data:`MAX_BACKOFF_S`).  For a sqlite registry the database file must exist:
    serving never creates a registry; a file that vanished counts as unreachable, one
    that never existed as "nothing trained yet" (``didact_registry_up`` 0, no backoff).
    """

    def __init__(
        self,
        settings: Settings,
        metrics: ServingMetrics | None = None,
        reload_s: float = DEFAULT_RELOAD_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.metrics = metrics
        self.reload_s = reload_s
        self._clock = clock
        self.current: LoadedModel | None = None
        self.up: bool | None = None
        self.failures = 0
        self.last_error: str = ""
        self._next = 0.0
        self._reg = None
        self._db_id = None
        self._said_no_champion = False

    # -- registry access --
    def _sqlite_path(self) -> Path | None:
        uri = self.settings.tracking_uri
        return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None

    def _registry(self):
        path = self._sqlite_path()
        if path is not None:
            try:
                st = path.stat()
            except OSError:
                self._reg = None
                if self._db_id is None and self.current is None:
                    return None  # never seen: nothing has been trained in this home yet
                raise RegistryError(
                    f"MLflow registry {path}",
                    "does not exist (moved or deleted?)",
                    "restore it or fix DIDACT_MLFLOW_TRACKING_URI; the last model keeps serving",
                ) from None
            db_id = (st.st_dev, st.st_ino)
            if self._reg is not None and db_id != self._db_id:  # replaced: reconnect to the new file
                self._reg = None
            self._db_id = db_id
        if self._reg is None:
            self._reg = ModelRegistry(self.settings)
        return self._reg

    def due(self) -> bool:
        return self._clock() >= self._next

    def check(self) -> bool:
        """Look at the champion alias once; load and switch when it moved."""
        from mlflow.exceptions import MlflowException  # lazy: mlflow is heavy to import

        try:
            reg = self._registry()
            version = None if reg is None else _champion_version(reg, CHAMPION)
        except (DidactError, MlflowException, OSError) as e:
            self._failed(f"checking the champion alias: {short_error(e)}")
            return False
        if reg is None:
            self._no_registry()
            return False
        self._ok()
        if version is None:
            self._no_champion()
            return False
        if self.current is not None and version == self.current.version:
            return False
        model = self._load(reg, version)
        if model is None:
            return False
        old = self.current
        self.current = model
        self._said_no_champion = False
        if self.metrics is not None:
            self.metrics.model_loaded(model)
        log.info(
            "serving %s v%d (threshold %.4g; %d features%s%s)%s",
            self.settings.model_name,
            version,
            model.threshold,
            len(model.base_features),
            ", node-level" if model.needs_node_metrics else "",
            f", window {model.window}" if model.window > 1 else "",
            f", was v{old.version}" if old else "",
        )
        return True

    def follow(self, stop: threading.Event, after_check: Callable[[], None] | None = None) -> None:
        """Check whenever due until ``stop`` is set (the watcher thread's loop); ``after_check``
        runs after every check (serving re-renders its exposition)."""
        while not stop.is_set():
            if self.due():
                try:
                    self.check()
                except Exception as e:  # noqa: BLE001 — the watcher must outlive any registry surprise
                    self._failed(f"unexpected {type(e).__name__}: {e}")
                if after_check is not None:
                    after_check()
            stop.wait(min(1.0, self.reload_s))

    def _load(self, reg, version: int) -> LoadedModel | None:
        """Champion ``version`` ready to score (None, counted as a failure, when it cannot be)."""
        from mlflow.exceptions import MlflowException  # lazy: mlflow is heavy to import

        try:
            detector = reg.load(version)
        except (DidactError, MlflowException, OSError) as e:
            self._failed(f"loading champion v{version}: {short_error(e)}", registry_down=False)
            return None
        try:
            model = LoadedModel(
                detector, version, facts=model_facts(reg, version), centroids=centroids_of(reg, version)
            )
        except DidactError as e:
            self._failed(f"champion v{version} cannot be served: {short_error(e)}", registry_down=False)
            return None
        # decide one-pass scoring now, not mid-interval
        model.score(np.zeros((1, len(model.features)), np.float32))
        return model

    def _no_registry(self) -> None:
        self._next = self._clock() + self.reload_s
        if self.metrics is not None:
            self.metrics.registry_up.set(0)
        if not self._said_no_champion:
            log.warning(
                "no model registry at %s yet (nothing trained in this home): serving waits and checks "
                "every %gs — train a champion (didact demo, or materialise champion_model)",
                self._sqlite_path(),
                self.reload_s,
            )
            self._said_no_champion = True

    def _no_champion(self) -> None:
        if self.current is not None:
            log.warning(
                "the champion alias of %s is gone; still serving v%d",
                self.settings.model_name,
                self.current.version,
            )
        elif not self._said_no_champion:
            log.warning(
                "no champion in the registry %s (model %s) yet: serving waits and checks every "
                "%gs — train one (didact demo, or materialise champion_model)",
                _redact_uri(self.settings.tracking_uri),
                self.settings.model_name,
                self.reload_s,
            )
            self._said_no_champion = True

    def _ok(self) -> None:
        if self.up is False:
            log.warning("model registry reachable again after %d failed check(s)", self.failures)
        self.up, self.failures, self.last_error = True, 0, ""
        self._next = self._clock() + self.reload_s
        if self.metrics is not None:
            self.metrics.registry_up.set(1)

    def _failed(self, problem: str, registry_down: bool = True) -> None:
        self.failures += 1
        self.last_error = problem
        delay = min(
            self.reload_s * 2 ** (self.failures - 1),
            max(self.reload_s, min(MAX_BACKOFF_S, 10 * self.reload_s)),
        )
        self._next = self._clock() + delay
        keeping = f"keeping v{self.current.version}" if self.current else "no model to serve yet"
        log.warning("model registry: %s — %s; retry in %.0fs", problem, keeping, delay)
        if self.metrics is not None:
            self.metrics.registry_errors.inc()
            if registry_down:
                self.metrics.registry_up.set(0)
        if registry_down:
            self.up = False
            self._reg = None


def _champion_version(reg, alias: str) -> int | None:
    """The version ``alias`` points at (None: no such model or alias), in one request.

    Reads the registered model's aliases rather than ``ModelRegistry.alias``, which takes
    any error mentioning "alias" for a missing alias: a tracking server that is down must
    count as unreachable, not as "no champion"."""
    from mlflow.exceptions import MlflowException  # lazy: mlflow is heavy to import

    try:
        model = reg.client.get_registered_model(reg.name)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code):
            return None
        raise
    version = (getattr(model, "aliases", None) or {}).get(alias)
    return int(version) if version is not None else None


def _redact_uri(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password:
        parts = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
    return urlunsplit(parts)
