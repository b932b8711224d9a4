"""Loading plugins named in bot.yaml, and running their hooks under a time budget."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from peerbot.config import PluginEntry
from peerbot.core.routing import PluginProposal
from peerbot.plugin_api import (
    Guard,
    Plugin,
    PluginContext,
    PluginOptionError,
    Question,
    Router,
    SpecialtyInfo,
    Verdict,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "LoadedPlugin",
    "PluginLoadError",
    "PluginSet",
    "load_plugins",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "peerbot.plugins"


class PluginLoadError(Exception):
    """A plugin cannot be loaded; names the plugin (and the option) at fault."""

    def __init__(self, path: str, use: str, message: str, line: int | None = None) -> None:
        where = f" (line {line})" if line else ""
        super().__init__(f"{path} ({use}): {message}{where}")
        self.path = path
        self.use = use
        self.message = message
        self.line = line


@dataclass
class LoadedPlugin:
    """A plugin instance and what the core keeps about it."""

    entry: PluginEntry
    instance: Plugin
    rooms: frozenset[str] | None = None
    """Resolved room IDs where it applies; None: every intake room."""
    errors: int = 0
    timeouts: int = 0
    calls: int = 0

    @property
    def name(self) -> str:
        """The plugin's name."""
        return self.instance.name

    @property
    def kind(self) -> str:
        """``router`` or ``guard``."""
        return "router" if isinstance(self.instance, Router) else "guard"

    def applies_to(self, room_id: str) -> bool:
        """True when the plugin runs for questions from this room."""
        return self.rooms is None or room_id in self.rooms


def _resolve(entry: PluginEntry) -> type[Any]:
    use = entry.use
    if ":" in use:
        module_name, _, attr = use.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise PluginLoadError(
                entry.path, use, f"cannot import module {module_name!r}: {exc}", entry.line
            ) from exc
        found = getattr(module, attr, None)
        if found is None:
            raise PluginLoadError(
                entry.path, use, f"module {module_name!r} has no {attr!r}", entry.line
            )
        if not isinstance(found, type):
            raise PluginLoadError(entry.path, use, f"{attr!r} is not a class", entry.line)
        return found
    points = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == use]
    if not points:
        raise PluginLoadError(
            entry.path,
            use,
            f"no installed plugin named {use!r} (entry-point group {ENTRY_POINT_GROUP}); "
            "use module.path:ClassName for a plugin that is not installed",
            entry.line,
        )
    try:
        loaded = points[0].load()
    except Exception as exc:
        raise PluginLoadError(entry.path, use, f"cannot load: {exc}", entry.line) from exc
    if not isinstance(loaded, type):
        raise PluginLoadError(entry.path, use, "the entry point is not a class", entry.line)
    return loaded


def load_plugins(
    entries: Sequence[PluginEntry],
    *,
    language: str,
    data_root: Path,
) -> list[LoadedPlugin]:
    """Import and build every plugin; the first failure raises PluginLoadError."""
    loaded: list[LoadedPlugin] = []
    for entry in entries:
        cls = _resolve(entry)
        if not issubclass(cls, Router | Guard):
            raise PluginLoadError(
                entry.path,
                entry.use,
                "a plugin must subclass peerbot.plugin_api.Router or Guard",
                entry.line,
            )
        data_dir = data_root / cls.__name__
        context = PluginContext(
            language=language,
            data_dir=data_dir,
            logger=logging.getLogger(f"peerbot.plugin.{cls.__name__}"),
        )
        try:
            instance = cls(entry.options, context)
        except PluginOptionError as exc:
            raise PluginLoadError(
                f"{entry.path}.options.{exc.option}", entry.use, exc.message, entry.line
            ) from exc
        except ImportError as exc:
            raise PluginLoadError(entry.path, entry.use, str(exc), entry.line) from exc
        except Exception as exc:
            raise PluginLoadError(
                entry.path, entry.use, f"failed to start: {type(exc).__name__}: {exc}", entry.line
            ) from exc
        loaded.append(LoadedPlugin(entry=entry, instance=instance))
    return loaded


def ensure_data_dirs(plugins: Sequence[LoadedPlugin]) -> None:
    """Create each plugin's data folder, owner-only."""
    for plugin in plugins:
        folder = plugin.instance.context.data_dir
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)


def _bind(method: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: method(*args)


@dataclass
class PluginSet:
    """The loaded plugins, and the isolation around their hooks."""

    plugins: list[LoadedPlugin] = field(default_factory=list)

    def scope(self, room_id: Callable[[str], str]) -> None:
        """Resolve each plugin's ``rooms`` (aliases to room IDs); None: every intake room."""
        for plugin in self.plugins:
            rooms = plugin.entry.rooms
            plugin.rooms = None if rooms is None else frozenset(room_id(r) for r in rooms)

    @property
    def routers(self) -> list[LoadedPlugin]:
        """Router plugins, in config order."""
        return [p for p in self.plugins if p.kind == "router"]

    @property
    def guards(self) -> list[LoadedPlugin]:
        """Guard plugins, in config order."""
        return [p for p in self.plugins if p.kind == "guard"]

    async def _call(self, plugin: LoadedPlugin, make: Callable[[], Any]) -> Any:
        plugin.calls += 1
        try:
            return await asyncio.wait_for(make(), timeout=plugin.instance.time_budget)
        except TimeoutError:
            plugin.timeouts += 1
            plugin.errors += 1
            log.warning(
                "Plugin %s exceeded its %.1f s budget; skipped for this question",
                plugin.name,
                plugin.instance.time_budget,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            plugin.errors += 1
            log.exception("Plugin %s failed; skipped for this question", plugin.name)
        return None

    async def propose(
        self, question: Question, specialties: Sequence[SpecialtyInfo]
    ) -> list[PluginProposal]:
        """Every applicable router's proposals; failing routers are skipped."""
        out: list[PluginProposal] = []
        for plugin in self.routers:
            if not plugin.applies_to(question.room_id):
                continue
            router = plugin.instance
            assert isinstance(router, Router)
            result = await self._call(plugin, _bind(router.propose, question, specialties))
            if result is None:
                continue
            try:
                for p in result:
                    out.append(
                        PluginProposal(plugin.name, str(p.specialty), float(p.score), str(p.reason))
                    )
            except Exception:
                plugin.errors += 1
                log.exception("Plugin %s returned something that is not proposals", plugin.name)
        return out

    async def check(self, question: Question) -> list[tuple[LoadedPlugin, Verdict]]:
        """Every applicable guard's verdict; failing guards are skipped."""
        out: list[tuple[LoadedPlugin, Verdict]] = []
        for plugin in self.guards:
            if not plugin.applies_to(question.room_id):
                continue
            guard = plugin.instance
            assert isinstance(guard, Guard)
            result = await self._call(plugin, _bind(guard.check, question))
            if isinstance(result, Verdict):
                out.append((plugin, result))
            elif result is not None:
                plugin.errors += 1
                log.error("Plugin %s returned %r, not a Verdict", plugin.name, type(result))
        return out

    def learn(self, text: str, specialty: str) -> None:
        """Tell every router a question's specialty."""
        for plugin in self.routers:
            self._sync_call(plugin, "learn", text, specialty)

    def forget(self, text: str, specialty: str) -> None:
        """Tell every router to unlearn a question's specialty."""
        for plugin in self.routers:
            self._sync_call(plugin, "forget", text, specialty)

    @staticmethod
    def _sync_call(plugin: LoadedPlugin, method: str, *args: Any) -> None:
        try:
            getattr(plugin.instance, method)(*args)
        except Exception:
            plugin.errors += 1
            log.exception("Plugin %s failed in %s()", plugin.name, method)

    async def close(self) -> None:
        """Close every plugin."""
        for plugin in self.plugins:
            try:
                await plugin.instance.close()
            except Exception:
                log.exception("Plugin %s failed to close", plugin.name)
