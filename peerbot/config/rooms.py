"""The sections about rooms and questions: intake, routing, related threads, experts,
reminders, digests, communities, plugins."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from peerbot.config.fields import _Fields
from peerbot.config.model import (
    _HASHTAG,
    _PLUGIN_USE,
    ENGINES,
    Community,
    DigestConfig,
    ExpertsConfig,
    IntakeRoom,
    PluginEntry,
    RelatedConfig,
    RemindersConfig,
    RoutingConfig,
    Specialty,
    is_room_ref,
)
from peerbot.config.reader import _fmt, _kind, _Path
from peerbot.core.followup import parse_clock
from peerbot.core.intake import Trigger


class _RoomSections(_Fields):
    """intake, routing, related, experts, reminders, digest, communities, plugins."""

    def intake(self, top: Mapping[str, Any]) -> tuple[IntakeRoom, ...]:
        raw = top.get("intake")
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.bad(("intake",), f"must be a list of rooms, not {_kind(raw)}")
            return ()
        rooms: list[IntakeRoom] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(raw):
            p: _Path = ("intake", i)
            d = self.mapping(item, p, ("room", "trigger", "hashtags"))
            if not isinstance(item, dict):
                continue
            room = self.room(d, "room", p)
            trig_raw = self.string(d, "trigger", p, required=False, default="hashtag") or "hashtag"
            try:
                trigger = Trigger(trig_raw.lower())
            except ValueError:
                self.bad((*p, "trigger"), "must be one of hashtag, question, all")
                trigger = Trigger.HASHTAG
            hashtags = self.string_list(
                d,
                "hashtags",
                p,
                check=lambda s: bool(_HASHTAG.match(s)),
                what="not a hashtag (like #DocTocToc)",
            )
            if trigger is Trigger.HASHTAG and not hashtags and "hashtags" not in d:
                self.bad((*p, "hashtags"), "is required when trigger is hashtag")
            if room and room in seen:
                self.bad((*p, "room"), f"is already intake[{seen[room]}]")
            seen.setdefault(room, i)
            rooms.append(IntakeRoom(room=room, trigger=trigger, hashtags=hashtags or ()))
        return tuple(rooms)

    def routing(self, top: Mapping[str, Any]) -> RoutingConfig | None:
        if "routing" not in top:
            self.bad(("routing",), "is required (at least routing.fallback_room)")
            return None
        d = self.section(top, "routing", ("fallback_room", "specialties"))
        fallback_allow = False
        if isinstance(d.get("fallback_room"), dict):
            # The long form: {room: ..., allow_from_encrypted: true}.
            fp: _Path = ("routing", "fallback_room")
            f = self.mapping(d["fallback_room"], fp, ("room", "allow_from_encrypted"))
            fallback = self.room(f, "room", fp)
            fallback_allow = self.boolean(f, "allow_from_encrypted", fp)
        else:
            fallback = self.room(d, "fallback_room", ("routing",))
        raw = d.get("specialties") or []
        specialties: list[Specialty] = []
        if not isinstance(raw, list):
            self.bad(("routing", "specialties"), f"must be a list, not {_kind(raw)}")
            raw = []
        names: dict[str, int] = {}
        for i, item in enumerate(raw):
            p: _Path = ("routing", "specialties", i)
            s = self.mapping(
                item,
                p,
                ("name", "room", "keywords", "allow_from_encrypted", "escalation_after", "digest"),
            )
            if not isinstance(item, dict):
                continue
            name = self.string(s, "name", p) or ""
            room = self.room(s, "room", p)
            keywords = self.string_list(s, "keywords", p) or ()
            allow = self.boolean(s, "allow_from_encrypted", p)
            key = name.casefold()
            if name and key in names:
                self.bad(
                    (*p, "name"),
                    f"duplicate specialty name, already routing.specialties[{names[key]}]",
                )
            names.setdefault(key, i)
            after = self.durations(s, "escalation_after", p)
            digest = self.digest(s, "digest", p) if "digest" in s else None
            specialties.append(
                Specialty(
                    name=name,
                    room=room,
                    keywords=keywords,
                    allow_from_encrypted=allow,
                    escalation_after=after,
                    digest=digest,
                )
            )
        return RoutingConfig(
            fallback_room=fallback,
            specialties=tuple(specialties),
            fallback_allow_from_encrypted=fallback_allow,
        )

    def related(self, top: Mapping[str, Any]) -> RelatedConfig:
        d = self.section(top, "related", ("max_results", "min_score", "engine", "model"))
        max_results = self.integer(d, "max_results", ("related",), 3, 0, 10)
        engine = self.string(d, "engine", ("related",), required=False, default="auto") or "auto"
        if engine not in ENGINES:
            self.bad(("related", "engine"), f"must be one of {', '.join(ENGINES)}")
            engine = "auto"
        model = self.related_model(d, engine)
        min_score: float | None = None
        if d.get("min_score") is not None:
            value = d["min_score"]
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.bad(("related", "min_score"), f"must be a number, not {_kind(value)}")
            elif not 0.0 <= float(value) <= 1.0:
                self.bad(("related", "min_score"), "must be between 0 and 1")
            else:
                min_score = float(value)
        return RelatedConfig(
            max_results=max_results, min_score=min_score, engine=engine, model=model
        )

    def related_model(self, d: Mapping[str, Any], engine: str) -> str:
        # Imported here, not at module level: importing config stays free of numpy.
        from peerbot.core import semantic

        model = self.string(d, "model", ("related",), required=False) or semantic.DEFAULT_MODEL
        if model not in semantic.MODELS:
            self.bad(("related", "model"), f"must be one of {', '.join(semantic.MODELS)}")
            return semantic.DEFAULT_MODEL
        if engine == "hybrid":
            embedder, sentence = semantic.load_embedder(model)
            if embedder is None:
                # The sentence says why (extra missing, no wheel for this machine) and the fix.
                reason = sentence.split("(", 1)[-1].rstrip(").")
                self.bad(("related", "engine"), f"hybrid cannot run here: {reason}")
        return model

    def experts(self, top: Mapping[str, Any]) -> ExpertsConfig:
        p: _Path = ("experts",)
        d = self.section(top, "experts", ("pings_per_step", "daily_cap", "timezone"))
        return ExpertsConfig(
            pings_per_step=self.integer(d, "pings_per_step", p, 3, 1, 50),
            daily_cap=self.integer(d, "daily_cap", p, 5, 1, 1000),
            timezone=self.timezone(d, "timezone", p, "Europe/Paris"),
        )

    def reminders(self, top: Mapping[str, Any]) -> RemindersConfig:
        d = self.section(top, "reminders", ("solve_after",))
        if "solve_after" in d and d["solve_after"] in (False, "off"):
            return RemindersConfig(solve_after=None)
        after = self.duration(d, "solve_after", ("reminders",))
        return RemindersConfig(solve_after=after if after is not None else 3 * 86400.0)

    def digest(self, d: Mapping[str, Any], key: str, path: _Path) -> DigestConfig | None:
        p: _Path = (*path, key)
        g = self.mapping(d[key], p, ("at", "timezone", "every"))
        if not isinstance(d[key], dict):
            return None
        at = self.string(g, "at", p, required=False, default="08:00") or "08:00"
        try:
            parse_clock(at)
        except ValueError as exc:
            self.bad((*p, "at"), str(exc))
        tz = self.timezone(g, "timezone", p, "Europe/Paris")
        every = self.duration(g, "every", p)
        return DigestConfig(at=at, timezone=tz, every_s=every)

    def communities(self, top: Mapping[str, Any]) -> tuple[Community, ...]:
        raw = top.get("communities")
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.bad(("communities",), f"must be a list of communities, not {_kind(raw)}")
            return ()
        out: list[Community] = []
        for i, item in enumerate(raw):
            p: _Path = ("communities", i)
            d = self.mapping(item, p, ("name", "rooms"))
            if not isinstance(item, dict):
                continue
            name = self.string(d, "name", p, required=False, default=f"communities[{i}]")
            rooms = self.string_list(
                d,
                "rooms",
                p,
                required=True,
                check=is_room_ref,
                what="not a room alias or ID (like #name:server or !id:server)",
            )
            if rooms is None:
                continue
            if len(set(rooms)) < 2:
                self.bad((*p, "rooms"), "needs at least two different rooms")
                continue
            out.append(Community(name=name or f"communities[{i}]", rooms=rooms))
        return tuple(out)

    def plugins(self, top: Mapping[str, Any]) -> tuple[PluginEntry, ...]:
        raw = top.get("plugins")
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.bad(("plugins",), f"must be a list, not {_kind(raw)}")
            return ()
        out: list[PluginEntry] = []
        for i, item in enumerate(raw):
            p: _Path = ("plugins", i)
            d = self.mapping(item, p, ("use", "rooms", "options"))
            if not isinstance(item, dict):
                continue
            use = self.string(
                d,
                "use",
                p,
                check=lambda s: bool(_PLUGIN_USE.match(s)),
                what="must be module.path:ClassName or an entry-point name",
            )
            rooms = self.string_list(
                d, "rooms", p, check=is_room_ref, what="not a room alias or ID"
            )
            options = d.get("options") or {}
            if not isinstance(options, dict):
                self.bad((*p, "options"), f"must be a mapping, not {_kind(options)}")
                options = {}
            if use:
                out.append(
                    PluginEntry(
                        use=use,
                        rooms=rooms,
                        options={str(k): v for k, v in options.items()},
                        path=_fmt(p),
                        line=self.r.line(p),
                    )
                )
        return tuple(out)
