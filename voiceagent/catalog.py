"""Use cases and profiles as the running service reads them: from the store, use cases cached.

``config/`` is the source of truth; ``voiceagent config load`` (or, for the embedded SQLite
store, start-up) writes it to the store, and every server process reads it from there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import trio

import voiceagent.store.config_records as config_records
from voiceagent import twiml
from voiceagent.errors import ConfigError, StoreError
from voiceagent.log_episodes import Episode
from voiceagent.store.base import Store
from voiceagent.tools.registry import ToolRegistry
from voiceagent.usecases import Profile, UseCase, load_profiles_file, load_use_case_file

log = logging.getLogger(__name__)

USE_CASE_TTL_S = 60.0


class UnknownUseCase(LookupError):
    pass


class UnusableUseCase(UnknownUseCase):
    """In the store, but not servable here: unreadable, or naming a tool this process does
    not register (config loaded from a checkout whose image was not rebuilt, a rolling
    deploy). Its calls are apologised to, as for a missing one, never answered with a 500."""


class Catalog:
    def __init__(self, store: Store, registry: ToolRegistry) -> None:
        self._store = store
        self._registry = registry
        self._cache: dict[str, tuple[float, UseCase]] = {}
        # a store down fails every lookup past the cache's time (each call, or each turn
        # of the scripted model): the first of each use case in full, then counts
        self._stale = Episode(log, lasts="use cases still unreadable, served from the cache",
                              ended="use cases read again", quiet_s=0)

    async def use_case(self, name: str) -> UseCase:
        cached = self._cache.get(name)
        if cached is not None and trio.current_time() - cached[0] < USE_CASE_TTL_S:
            return cached[1]
        try:
            item = await self._store.get(name, "configuration")
        except StoreError as err:
            if cached is None:
                raise
            # throttled or unreachable: the use case it had is better than no call at all;
            # the next lookup reads again
            self._stale.note(name, "use case unreadable, using the cached one", use_case=name,
                             age_s=round(trio.current_time() - cached[0]),
                             error=str(err)[:300])
            return cached[1]
        if item is None:
            raise UnknownUseCase(f"no use case {name!r} in the store; run "
                                 "`voiceagent config load` or check STACK_USE_CASE")
        try:
            use_case = config_records.use_case_from_item(item)
            self._registry.check_use_case(use_case, keywords=False)    # loaded already
        except ConfigError as err:
            raise UnusableUseCase(f"use case {name!r} cannot be served by this process: "
                                  f"{err}") from err
        self._cache[name] = (trio.current_time(), use_case)
        self._stale.succeeded()
        return use_case

    def held(self, name: str) -> UseCase | None:
        """The use case as this process last read it, however long ago, without reading the
        store (None: never read here): for words said where a store read would cost more
        than they are worth (``/action``'s plain goodbye)."""
        cached = self._cache.get(name)
        return cached[1] if cached is not None else None

    def close(self) -> None:
        """At shutdown: stale lookups counted since the last summary line."""
        self._stale.close()

    async def all_use_cases(self) -> list[UseCase]:
        items = await self._store.query_index("use-case")
        return [config_records.use_case_from_item(item) for item in items]

    async def profile(self, phone: str) -> Profile | None:
        if not phone:
            return None
        item = await self._store.get(phone, "profile")
        return config_records.profile_from_item(item) if item is not None else None


@dataclass(frozen=True)
class ConfigSet:
    use_cases: tuple[UseCase, ...]
    profiles: tuple[Profile, ...]


def read_config_dir(path: Path, registry: ToolRegistry) -> ConfigSet:
    """Every use case under ``usecases/`` (``*.yaml``, ``*.yml``; not dotfiles) and
    ``profiles.yaml``, validated; tools must exist."""
    folder = path / "usecases"
    if not folder.is_dir():
        raise ConfigError(str(path), "", "no usecases/ folder here; point CONFIG_DIR at a "
                                         "folder laid out like the repository's config/")
    # dotfiles are not use cases: macOS leaves binary ``._name.yaml`` files (AppleDouble) on
    # volumes without extended attributes, and editors leave hidden ones
    files = sorted(f for f in folder.glob("*.y*ml") if not f.name.startswith("."))
    use_cases = tuple(load_use_case_file(f) for f in files)
    for file, use_case in zip(files, use_cases, strict=True):
        try:
            registry.check_use_case(use_case)
        except ConfigError as err:          # say which file, not only which use case
            raise ConfigError(str(file), err.key_path, err.problem) from err
        problem = twiml.size_problem(use_case)
        if problem is not None:
            raise ConfigError(str(file), "relay", problem)
        if _keys_never_sent(use_case):
            raise ConfigError(str(file), "dtmf.handlers", (
                "Twilio sends no keys unless relay.dtmfDetection is true (its default is "
                "off), so these handlers would never run; set dtmfDetection: true under "
                "relay:, or turn it on mid-call in a relay_updates rule's config"))
    names = [u.name for u in use_cases]
    if len(set(names)) != len(names):
        raise ConfigError(str(folder), "name", f"two files declare the same use case: {names}")
    profiles_path = path / "profiles.yaml"
    profiles = load_profiles_file(profiles_path) if profiles_path.exists() else ()
    for index, profile in enumerate(profiles):
        if profile.use_case is not None and profile.use_case not in names:
            raise ConfigError(str(profiles_path), f"profiles[{index}].use_case",
                              f"no use case {profile.use_case!r}; known: {names}")
    return ConfigSet(use_cases, profiles)


async def write_config(store: Store, config: ConfigSet) -> dict[str, str]:
    """Write use cases and profiles; returns what happened to each (created, updated,
    unchanged) so a re-run is visibly idempotent."""
    outcome: dict[str, str] = {}
    items = [config_records.use_case_item(u) for u in config.use_cases]
    items += [config_records.profile_item(p) for p in config.profiles]
    for item in items:
        current = await store.get(item["pk"], item["sk"])
        label = f"{item['sk']}:{item['pk']}"
        if config_records.same_item(current, item):
            outcome[label] = "unchanged"
            continue
        await store.put(item)
        outcome[label] = "created" if current is None else "updated"
    return outcome


def _keys_never_sent(use_case: UseCase) -> bool:
    """Key handlers, but no dtmfDetection at the start nor from a relay update: a file
    check only (a use case already stored is served as it was)."""
    def on(value: object) -> bool:
        return value is True or str(value).lower() == "true"
    if not use_case.dtmf.handlers or on(use_case.relay.get("dtmfDetection")):
        return False
    return not any(on((rule.config or {}).get("dtmfDetection"))
                   for rule in use_case.relay_updates)
