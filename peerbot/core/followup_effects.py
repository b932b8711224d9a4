"""The messages of the follow-ups, as outbox effects (pure): escalation reminders, the copy in
the triage room, the asker's notices, digests and question lists.

A message that must ring someone is an ``m.text`` whose ``m.mentions.user_ids`` names exactly
them (an ``m.notice`` never rings: Synapse's ``.m.rule.suppress_notices``); everything else is
an ``m.notice`` pinging nobody. Transaction IDs derive from the deadline's key, so a restart
records and sends each message once.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from peerbot.core.followup import DueAction, SpecialtyStats
from peerbot.core.ids import tx_id
from peerbot.core.lifecycle import Outgoing, thread_relation
from peerbot.core.messages import Rendered, Texts, defang, shorten
from peerbot.core.records import QuestionRow

__all__ = [
    "Listed",
    "digest_effect",
    "escalation_effects",
    "listed_lines",
    "solve_reminder_effect",
    "stats_lines",
    "wait",
]

MAX_LISTED = 15
"""Questions shown in one digest section or one !unanswered answer."""


def wait(texts: Texts, seconds: float) -> str:
    """A waiting time for people: ``45 min``, ``3 h``, ``2 j``."""
    s = max(0, int(seconds))
    if s < 120:
        return texts.s("wait_s", n=s)
    if s < 2 * 3600:
        return texts.s("wait_min", n=s // 60)
    if s < 2 * 86400:
        return texts.s("wait_h", n=s // 3600)
    return texts.s("wait_d", n=s // 86400)


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _pill(user_id: str) -> str:
    return f'<a href="https://matrix.to/#/{_e(user_id)}">{_e(user_id)}</a>'


def _content(
    body: str,
    formatted: str,
    *,
    mentions: Sequence[str] = (),
    relates_to: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An m.text naming exactly ``mentions`` (who it rings), or an m.notice ringing nobody."""
    content: dict[str, Any] = {
        "msgtype": "m.text" if mentions else "m.notice",
        "body": body,
        "format": "org.matrix.custom.html",
        "formatted_body": formatted,
        "m.mentions": {"user_ids": list(mentions)} if mentions else {},
    }
    if relates_to is not None:
        content["m.relates_to"] = relates_to
    return content


@dataclass(frozen=True)
class EscalationInputs:
    """What an escalation step says, gathered by the scheduler."""

    experts: Sequence[str]
    """The experts to ping (already chosen)."""
    waited_s: float
    target_label: str
    forward_url: str
    fallback_room: str
    fallback_label: str
    show_text: bool
    """The question's text may be copied into the triage room (encryption, consent)."""


def escalation_effects(
    q: QuestionRow, due: DueAction, inputs: EscalationInputs, texts: Texts
) -> list[Outgoing]:
    """A step's messages: the reminder in the forward's thread (pinging only the chosen
    experts); at the last step also the copy in the triage room and the asker's notice."""
    assert q.forward_event_id is not None and q.target_room is not None
    age = wait(texts, inputs.waited_s)
    lines = [texts.s("esc_reminder", age=age)]
    html_lines = [_e(lines[0])]
    if inputs.experts:
        listed = ", ".join(inputs.experts)
        lines.append(texts.s("esc_ping", mentions=listed))
        pills = ", ".join(_pill(u) for u in inputs.experts)
        html_lines.append(_e(texts.s("esc_ping", mentions="\0")).replace("\0", pills))
    else:
        lines.append(texts.s("esc_nobody"))
        html_lines.append(_e(lines[-1]))
    out = [
        Outgoing(
            tx_id(f"escalate-{due.step}", q.event_id),
            "escalation",
            q.target_room,
            _content(
                "\n".join(lines),
                "<br>".join(html_lines),
                mentions=inputs.experts,
                relates_to=thread_relation(q.forward_event_id, q.forward_event_id),
            ),
        )
    ]
    if not due.last_step:
        return out
    room = defang(inputs.target_label)
    to_triage = q.target_room != inputs.fallback_room
    if to_triage:
        title = texts.s("esc_fallback_title", age=age, room=room)
        link = texts.s("esc_fallback_link")
        if inputs.show_text and q.body:
            text, _ = shorten(defang(q.body), 1000)
            quoted = "\n".join("> " + line for line in text.split("\n"))
            quoted_html = "<br>".join(_e(line) for line in text.split("\n"))
            inner_html = f"<blockquote>{quoted_html}</blockquote>"
        else:
            quoted = texts.s("esc_fallback_hidden")
            inner_html = f"<p><em>{_e(quoted)}</em></p>"
        body = f"{title}{texts.s('colon')}\n{quoted}\n{link}{texts.s('colon')} {inputs.forward_url}"
        formatted = (
            f"<p><strong>{_e(title)}</strong></p>{inner_html}"
            f'<p><a href="{_e(inputs.forward_url)}">{_e(link)}</a></p>'
        )
        out.append(
            Outgoing(
                tx_id("escalate-triage", q.event_id),
                "escalation-triage",
                inputs.fallback_room,
                _content(body, formatted),
            )
        )
    key = "esc_asker" if to_triage else "esc_asker_triage"
    told = _to_asker(
        q,
        "escalation-asker",
        texts,
        key,
        room=room,
        age=age,
        fallback=defang(inputs.fallback_label),
    )
    return [*out, told] if told else out


def _to_asker(q: QuestionRow, kind: str, texts: Texts, key: str, **values: str) -> Outgoing | None:
    """A message in the asker's thread that mentions the asker, and only them."""
    if not q.sender:
        return None
    body = texts.s(key, asker=q.sender, **values)
    formatted = _e(texts.s(key, asker="\0", **values)).replace("\0", _pill(q.sender))
    return Outgoing(
        tx_id(kind, q.event_id),
        kind,
        q.room_id,
        _content(
            body,
            formatted,
            mentions=[q.sender],
            relates_to=thread_relation(q.event_id, q.ack_event_id or q.event_id),
        ),
    )


def solve_reminder_effect(q: QuestionRow, texts: Texts) -> Outgoing | None:
    """The asker's one reminder to mark the answer that helped with ✅ (mentions the asker)."""
    return _to_asker(q, "solve-reminder", texts, "solve_reminder")


@dataclass(frozen=True)
class Listed:
    """A question as a digest or !unanswered shows it: first line, age, answers, link."""

    first_line: str
    age_s: float
    answers: int
    url: str


def listed_lines(items: Sequence[Listed], total: int, texts: Texts) -> tuple[list[str], list[str]]:
    """Text and HTML lines of a bounded list of questions (with "and N more")."""
    txt: list[str] = []
    htm: list[str] = []
    for item in items[:MAX_LISTED]:
        first, _ = shorten(defang(item.first_line.split("\n", 1)[0].strip()), 100)
        line = texts.s("list_item", text=first, age=wait(texts, item.age_s), answers=item.answers)
        txt.append(f"- {line} {item.url}")
        htm.append(f'<li><a href="{_e(item.url)}">{_e(line)}</a></li>')
    shown = min(len(items), MAX_LISTED)
    if total > shown:
        more = texts.s("list_more", n=total - shown)
        txt.append(more)
        htm.append(f"<li>{_e(more)}</li>")
    return txt, htm


def digest_effect(
    due: DueAction,
    room_label: str,
    open_items: Sequence[Listed],
    open_total: int,
    solved_items: Sequence[Listed],
    texts: Texts,
    solved_total: int | None = None,
) -> Outgoing | None:
    """A room's digest; None when there is nothing to say. ``open_total`` and ``solved_total``
    count every question, the items only those listed (``solved_total`` defaults to them)."""
    solved_n = len(solved_items) if solved_total is None else max(solved_total, len(solved_items))
    if not open_total and not solved_n:
        return None
    title = texts.s("digest_title", room=defang(room_label), open=open_total, solved=solved_n)
    txt = [title]
    htm = [f"<p><strong>{_e(title)}</strong></p>"]
    for key, items, total in (
        ("digest_open", open_items, open_total),
        ("digest_solved", solved_items, solved_n),
    ):
        if not items:
            continue
        lines, html_lines = listed_lines(items, total, texts)
        txt += [texts.s(key), *lines]
        htm.append(f"<p>{_e(texts.s(key))}</p><ul>{''.join(html_lines)}</ul>")
    return Outgoing(
        tx_id("digest", due.key), "digest", due.room_id, _content("\n".join(txt), "".join(htm))
    )


def stats_lines(stats: Sequence[SpecialtyStats], texts: Texts) -> list[str]:
    """!stats as lines: per specialty and window, questions, answered share, p50 / p90."""
    na = texts.s("stats_na")
    lines = [texts.s("stats_title")]
    for s in stats:
        share = s.answered_share
        lines.append(
            "- "
            + texts.s(
                "stats_item",
                specialty=s.specialty or texts.s("stats_triage"),
                days=s.days,
                questions=s.questions,
                share=f"{share:.0%}" if share is not None else na,
                p50=wait(texts, s.p50_s) if s.p50_s is not None else na,
                p90=wait(texts, s.p90_s) if s.p90_s is not None else na,
            )
        )
    return lines


def rendered_lines(txt: Sequence[str], htm: str) -> Rendered:
    """Already-worded lines and their HTML as a message."""
    return Rendered("\n".join(txt), htm)
