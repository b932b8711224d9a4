"""Every sentence the bot says, in French and English; HTML escaping; permalinks (pure).

long: the catalogue of every sentence, French and English side by side, is kept in one place
on purpose.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

__all__ = [
    "MAX_QUOTE_CHARS",
    "Rendered",
    "Texts",
    "defang",
    "permalink",
    "shorten",
    "texts_for",
]

MAX_QUOTE_CHARS = 4000
"""Longer questions are forwarded shortened, with a marker saying so."""

WORD_JOINER = "\u2060"
_MENTION = re.compile(r"@(?=[\w.=\-/+]+:[\w.\-]+|room\b)", re.IGNORECASE)


def defang(text: str) -> str:
    """Make ``@room`` and user IDs inert: a word joiner after the ``@`` stops pills and pings."""
    return _MENTION.sub("@" + WORD_JOINER, text)


def permalink(room_id: str, event_id: str | None, via: Iterable[str] = ()) -> str:
    """A matrix.to link to a room or an event, with ``via`` servers."""
    url = "https://matrix.to/#/" + quote(room_id, safe="")
    if event_id:
        url += "/" + quote(event_id, safe="")
    servers = list(dict.fromkeys(s for s in via if s))[:3]
    if servers:
        url += "?" + "&".join("via=" + quote(s, safe="") for s in servers)
    return url


def shorten(text: str, limit: int = MAX_QUOTE_CHARS) -> tuple[str, bool]:
    """The text cut at a word boundary under ``limit`` characters, and whether it was cut."""
    if len(text) <= limit:
        return text, False
    cut = text[:limit]
    space = cut.rfind(" ", limit - 200)
    if space > 0:
        cut = cut[:space]
    return cut.rstrip(), True


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _quote_html(text: str) -> str:
    return "<br>".join(_e(line) for line in text.split("\n"))


def _link(url: str, label: str) -> str:
    return f'<a href="{_e(url)}">{_e(label)}</a>'


@dataclass(frozen=True)
class Rendered:
    """A message as plain text and as HTML."""

    body: str
    html: str

    def content(self, msgtype: str = "m.notice") -> dict[str, Any]:
        """The event content, pinging nobody."""
        return {
            "msgtype": msgtype,
            "body": self.body,
            "format": "org.matrix.custom.html",
            "formatted_body": self.html,
            "m.mentions": {},
        }


@dataclass(frozen=True)
class RelatedLine:
    """One related past thread, as the bot lists it."""

    url: str
    first_line: str
    age_days: float
    replies: int
    solved: bool


_FR: Mapping[str, str] = {
    "forward_title": "Question transmise par PeerBot",
    "forward_from": "de {name} ({user}) dans {room}",
    "forward_reply": "Vos réponses dans ce fil sont relayées dans le fil d'origine",
    "shortened": "[… message raccourci : {total} caractères au total, lire l'original]",
    "ack_specialty": "Votre question a été transmise au salon {room} ({specialty}).",
    "ack_fallback": (
        "Aucune spécialité ne correspond : votre question a été transmise au salon de tri {room}."
    ),
    "ack_link": "Voir le message transmis",
    "ack_words": "Mots décisifs : {words}.",
    "ack_fuzzy": "{keyword} (lu « {found} »)",
    "ack_reasons": "Suggestion d'un module : {reasons}.",
    "ack_answers": "Les réponses arriveront dans ce fil-là ; ce fil reste le vôtre.",
    "related_title": "Fils similaires déjà posés :",
    "related_age_today": "aujourd'hui",
    "related_age_days": "il y a {n} j",
    "related_age_months": "il y a {n} mois",
    "related_replies": "{n} réponse(s)",
    "invite_declined": (
        "PeerBot n'accepte les invitations que des serveurs autorisés par son opérateur."
    ),
    "encrypted_room": (
        "Ce salon est chiffré de bout en bout et cette installation de PeerBot ne lit pas encore "
        "les salons chiffrés : elle ne le rejoint pas. Demandez à l'opérateur d'activer le "
        "chiffrement ou invitez-la dans un salon non chiffré."
    ),
    "apology": "Désolé, un problème est survenu avec cette question ; l'équipe a été prévenue.",
    "colon": " :",
    "related_none": "Aucun fil similaire trouvé dans les salons que vous suivez.",
    "related_usage": "Écrivez le sujet après la commande, par exemple : !related arythmie sous AOD",
    "solved_done": "Fil marqué comme résolu ✅.",
    "unsolved_done": "Fil marqué comme non résolu.",
    "not_in_question_thread": "Cette commande s'utilise dans le fil d'une question.",
    "solved_denied": "Seule la personne qui a posé la question ou un modérateur du salon peut faire cela.",
    "not_admin": (
        "Désolé, cette commande est réservée aux administrateurs de ce salon "
        "(niveau de pouvoir {level} ou plus)."
    ),
    "unknown_command": "Commande inconnue. Tapez !peerbot help pour la liste des commandes.",
    "help_intro": (
        "PeerBot transmet les questions de ce salon aux salons de spécialité et répond dans le fil "
        "de chaque question avec des fils similaires déjà posés."
    ),
    "help_intake": "Ce salon est un salon d'accueil : déclencheur « {trigger} »{tags}.",
    "help_not_intake": "Ce salon n'est pas un salon d'accueil.",
    "help_everyone": (
        "Pour tous : !related <texte> (ou !search) cherche des fils similaires ; dans le fil de "
        "votre question, !solved / !unsolved la marque résolue ou non (ou réagissez avec ✅) ; "
        "!confirm transmet une question retenue par un contrôle (ou relaie vos messages retenus "
        "faute de chiffrement) ; !forward l'envoie vers un salon non chiffré. Les réponses sous "
        "une question transmise reviennent dans le fil d'origine, et inversement."
    ),
    "help_admin": (
        "Administrateurs : !route list | add <nom> <salon> <mot, mot...> | remove <nom> | "
        "keywords <nom> add|remove <mot...> | test <texte> | move <spécialité> (dans le fil "
        "d'une question) ; !intake on|off [hashtag|question|all] ; !plugins."
    ),
    "help_encryption": "Chiffrement des salons configurés : {rooms}.",
    "route_list_title": "Spécialités (les changements faits ici l'emportent sur bot.yaml) :",
    "route_list_item": "{name} → {room} : {keywords}",
    "route_list_empty": "Aucune spécialité ; tout va au salon de tri {room}.",
    "route_fallback": "Salon de tri : {room}.",
    "route_added": "Spécialité {name} ajoutée : {room}, mots-clés {keywords}.",
    "route_updated": "Spécialité {name} mise à jour : {room}, mots-clés {keywords}.",
    "route_removed": "Spécialité {name} retirée.",
    "route_unknown": "Aucune spécialité ne s'appelle « {name} ». Voir !route list.",
    "route_bad_room": "« {room} » n'est pas un salon connu (alias #nom:serveur ou ID !id:serveur).",
    "route_usage": (
        "Usage : !route list | add <nom> <salon> <mot, mot...> | remove <nom> | "
        "keywords <nom> add|remove <mot...> | test <texte> | move <spécialité>"
    ),
    "route_test_result": "Ce texte irait vers {room} ({specialty}), score {score}.",
    "route_test_fallback": "Ce texte irait au salon de tri {room} : aucune spécialité ne correspond.",
    "route_test_words": "Mots-clés : {words}.",
    "route_test_candidates": "Autres candidats : {candidates}.",
    "route_test_plugins": "Modules : {proposals}.",
    "route_test_guards": "Contrôles : {findings}.",
    "route_test_nothing_sent": "(Test : rien n'a été envoyé.)",
    "route_moved": "Question déplacée vers {room} ({specialty}) par un administrateur.",
    "route_move_same": "Cette question est déjà dans {specialty}.",
    "intake_on": "Ce salon est maintenant un salon d'accueil (déclencheur « {trigger} »).",
    "intake_off": "Ce salon n'est plus un salon d'accueil.",
    "intake_usage": "Usage : !intake on|off [hashtag|question|all]",
    "plugins_none": "Aucun module chargé.",
    "plugins_item": "{name} ({kind}) — salons : {rooms} — appels : {calls}, erreurs : {errors}, délais dépassés : {timeouts}",
    "plugins_all_intake": "tous les salons d'accueil",
    "guard_held": (
        "Votre question n'a pas encore été transmise : elle semble contenir {findings}. "
        "Ces informations permettent d'identifier un patient hors de ce salon. "
        "Modifiez votre message pour les retirer : il sera transmis dès qu'il sera propre."
    ),
    "guard_held_confirm": "Si vous êtes sûr(e), répondez !confirm dans ce fil pour le transmettre tel quel.",
    "guard_why": "{label} : {why}",
    "guard_confirm_denied": "Seule la personne qui a posé la question peut confirmer son envoi.",
    "guard_confirm_edit_only": "Cette question doit être modifiée avant d'être transmise.",
    "guard_nothing_held": "Aucune question retenue dans ce fil.",
    "unencrypted_target": (
        "Votre question vient d'un salon chiffré. Elle irait dans {room}, qui n'est pas chiffré : "
        "elle n'a pas été transmise. Pour l'y envoyer quand même, répondez !forward dans ce fil."
    ),
    "forward_denied": "Seule la personne qui a posé la question peut confirmer son envoi.",
    "forward_nothing_held": "Aucune question n'attend de confirmation !forward dans ce fil.",
    "command_failed": "Désolé, la commande a échoué ; l'équipe a été prévenue.",
    "startup_problems": "PeerBot a démarré avec {n} problème(s) à corriger (les vérifications de `peerbot doctor`, en anglais) :",
    "startup_more": "… et {n} autre(s) : `peerbot doctor --config bot.yaml` les liste tous.",
    # -- relays: answers and clarifications between the asker's thread and the forward's --
    "relay_answer": "{asker} : réponse de {name} dans {room}",
    "relay_from_asker": "{name}, qui a posé la question, ajoute dans {room}",
    "relay_from_other": "{name} écrit dans {room}",
    "relay_link": "Voir le message d'origine",
    "relay_held": (
        "Votre message n'a pas été relayé dans l'autre fil : il semble contenir {findings}. "
        "Ces informations permettent d'identifier un patient hors de ce salon. "
        "Modifiez votre message pour les retirer : il sera relayé dès qu'il sera propre."
    ),
    "relay_unencrypted": (
        "Votre message vient d'un salon chiffré ; l'autre fil de cette question est dans {room}, "
        "qui n'est pas chiffré : il n'y a pas été relayé. Pour l'y relayer quand même, "
        "répondez !confirm à votre message."
    ),
    "relay_confirmed": "Message relayé dans {room}.",
    "forward_state_answers": "Réponses : {n}",
    "forward_state_solved": "✅ Résolu",
}

_EN: Mapping[str, str] = {
    "forward_title": "Question forwarded by PeerBot",
    "forward_from": "from {name} ({user}) in {room}",
    "forward_reply": "Your replies in this thread are relayed to the original thread",
    "shortened": "[… message shortened: {total} characters in all, read the original]",
    "ack_specialty": "Your question was forwarded to {room} ({specialty}).",
    "ack_fallback": "No specialty matched: your question was forwarded to the triage room {room}.",
    "ack_link": "See the forwarded message",
    "ack_words": "Deciding words: {words}.",
    "ack_fuzzy": "{keyword} (read as “{found}”)",
    "ack_reasons": "Suggested by a plugin: {reasons}.",
    "ack_answers": "Answers will come in that thread; this thread stays yours.",
    "related_title": "Similar threads asked before:",
    "related_age_today": "today",
    "related_age_days": "{n} d ago",
    "related_age_months": "{n} mo ago",
    "related_replies": "{n} repl(ies)",
    "invite_declined": "PeerBot only accepts invitations from servers its operator allows.",
    "encrypted_room": (
        "This room is end-to-end encrypted and this PeerBot installation cannot read encrypted "
        "rooms yet, so it does not join. Ask the operator to enable encryption, or invite it to "
        "an unencrypted room."
    ),
    "apology": "Sorry, something went wrong with this question; the team has been told.",
    "colon": ":",
    "related_none": "No similar thread found in the rooms you are in.",
    "related_usage": "Write the topic after the command, for example: !related arrhythmia on DOAC",
    "solved_done": "Thread marked solved ✅.",
    "unsolved_done": "Thread marked not solved.",
    "not_in_question_thread": "Use this command in a question's thread.",
    "solved_denied": "Only the person who asked or a room moderator can do that.",
    "not_admin": (
        "Sorry, this command is for this room's administrators (power level {level} or more)."
    ),
    "unknown_command": "Unknown command. Type !peerbot help for the list of commands.",
    "help_intro": (
        "PeerBot forwards this room's questions to specialty rooms and answers in each "
        "question's thread with similar threads asked before."
    ),
    "help_intake": "This is an intake room: trigger “{trigger}”{tags}.",
    "help_not_intake": "This room is not an intake room.",
    "help_everyone": (
        "Everyone: !related <text> (or !search) finds similar threads; in your question's "
        "thread, !solved / !unsolved marks it solved or not (or react with ✅); !confirm "
        "forwards a question held by a check (or relays your messages held for lack of "
        "encryption); !forward sends it to an unencrypted room. Answers under a forwarded "
        "question come back to the original thread, and the other way round."
    ),
    "help_admin": (
        "Admins: !route list | add <name> <room> <word, word...> | remove <name> | "
        "keywords <name> add|remove <word...> | test <text> | move <specialty> (in a "
        "question's thread); !intake on|off [hashtag|question|all]; !plugins."
    ),
    "help_encryption": "Encryption of the configured rooms: {rooms}.",
    "route_list_title": "Specialties (changes made here win over bot.yaml):",
    "route_list_item": "{name} → {room}: {keywords}",
    "route_list_empty": "No specialties; everything goes to the triage room {room}.",
    "route_fallback": "Triage room: {room}.",
    "route_added": "Specialty {name} added: {room}, keywords {keywords}.",
    "route_updated": "Specialty {name} updated: {room}, keywords {keywords}.",
    "route_removed": "Specialty {name} removed.",
    "route_unknown": "No specialty is called “{name}”. See !route list.",
    "route_bad_room": "“{room}” is not a known room (alias #name:server or ID !id:server).",
    "route_usage": (
        "Usage: !route list | add <name> <room> <word, word...> | remove <name> | "
        "keywords <name> add|remove <word...> | test <text> | move <specialty>"
    ),
    "route_test_result": "This text would go to {room} ({specialty}), score {score}.",
    "route_test_fallback": "This text would go to the triage room {room}: no specialty matches.",
    "route_test_words": "Keywords: {words}.",
    "route_test_candidates": "Other candidates: {candidates}.",
    "route_test_plugins": "Plugins: {proposals}.",
    "route_test_guards": "Checks: {findings}.",
    "route_test_nothing_sent": "(Dry run: nothing was sent.)",
    "route_moved": "Question moved to {room} ({specialty}) by an administrator.",
    "route_move_same": "This question is already in {specialty}.",
    "intake_on": "This room is now an intake room (trigger “{trigger}”).",
    "intake_off": "This room is no longer an intake room.",
    "intake_usage": "Usage: !intake on|off [hashtag|question|all]",
    "plugins_none": "No plugins loaded.",
    "plugins_item": "{name} ({kind}) — rooms: {rooms} — calls: {calls}, errors: {errors}, time-outs: {timeouts}",
    "plugins_all_intake": "every intake room",
    "guard_held": (
        "Your question has not been forwarded yet: it seems to contain {findings}. "
        "Outside this room, that could identify a patient. Edit your message to remove it: it "
        "will be forwarded as soon as it is clean."
    ),
    "guard_held_confirm": "If you are sure, reply !confirm in this thread to forward it as it is.",
    "guard_why": "{label}: {why}",
    "guard_confirm_denied": "Only the person who asked can confirm sending it.",
    "guard_confirm_edit_only": "This question must be edited before it can be forwarded.",
    "guard_nothing_held": "No question is held in this thread.",
    "unencrypted_target": (
        "Your question comes from an encrypted room. It would go to {room}, which is not "
        "encrypted: it has not been forwarded. To send it there anyway, reply !forward in this "
        "thread."
    ),
    "forward_denied": "Only the person who asked can confirm sending it.",
    "forward_nothing_held": "No question in this thread is waiting for !forward.",
    "command_failed": "Sorry, the command failed; the team has been told.",
    "startup_problems": "PeerBot started with {n} problem(s) to fix (the same checks as `peerbot doctor`):",
    "startup_more": "… and {n} more: `peerbot doctor --config bot.yaml` lists them all.",
    # -- relays: answers and clarifications between the asker's thread and the forward's --
    "relay_answer": "{asker}: answer from {name} in {room}",
    "relay_from_asker": "{name}, who asked, adds in {room}",
    "relay_from_other": "{name} writes in {room}",
    "relay_link": "See the original message",
    "relay_held": (
        "Your message was not relayed to the other thread: it seems to contain {findings}. "
        "Outside this room, that could identify a patient. Edit your message to remove it: it "
        "will be relayed as soon as it is clean."
    ),
    "relay_unencrypted": (
        "Your message comes from an encrypted room; this question's other thread is in {room}, "
        "which is not encrypted: it was not relayed there. To relay it anyway, reply !confirm "
        "to your message."
    ),
    "relay_confirmed": "Message relayed to {room}.",
    "forward_state_answers": "Answers: {n}",
    "forward_state_solved": "✅ Solved",
}

# -- follow-ups: escalation, experts, the ✅ reminder, digests, !unanswered, !stats ------------

_FR_FOLLOWUP: Mapping[str, str] = {
    "wait_s": "{n} s",
    "wait_min": "{n} min",
    "wait_h": "{n} h",
    "wait_d": "{n} j",
    "esc_reminder": "Cette question attend toujours une réponse (depuis {age}).",
    "esc_ping": "{mentions} : vous êtes volontaires pour ce salon, pouvez-vous y jeter un œil ?",
    "esc_nobody": "Pour être prévenu(e) des questions sans réponse : !expert join dans ce salon.",
    "esc_fallback_title": "Toujours sans réponse après {age} dans {room}",
    "esc_fallback_hidden": (
        "Le texte vient d'un salon chiffré et n'est pas recopié ici : ouvrez le lien pour le lire."
    ),
    "esc_fallback_link": "Répondre dans le fil de la question transmise",
    "esc_asker": (
        "{asker} : votre question est toujours ouverte, personne n'a encore répondu dans {room} "
        "après {age}. Elle a aussi été montrée au salon de tri {fallback}."
    ),
    "esc_asker_triage": (
        "{asker} : votre question est toujours ouverte, personne n'a encore répondu dans {room} "
        "après {age}. Les volontaires du salon ont été relancés."
    ),
    "solve_reminder": (
        "{asker} : des réponses sont arrivées à votre question. Si l'une d'elles vous a aidé(e), "
        "réagissez avec ✅ à cette réponse (ou tapez !solved dans ce fil) : la question sera "
        "marquée résolue."
    ),
    "digest_title": "Résumé de {room} : {open} question(s) ouverte(s), {solved} résolue(s).",
    "digest_open": "Toujours ouvertes (les plus anciennes d'abord) :",
    "digest_solved": "Résolues depuis le dernier résumé :",
    "list_more": "… et {n} de plus.",
    "list_item": "{text} — {age}, {answers} réponse(s)",
    "unanswered_title": "Questions sans réponse dans ce salon ({n}), les plus anciennes d'abord :",
    "unanswered_none": "Aucune question sans réponse dans ce salon.",
    "not_specialty_room": "Cette commande s'utilise dans un salon de spécialité.",
    "stats_title": "Questions transmises par spécialité :",
    "stats_item": (
        "{specialty}, {days} j : {questions} question(s), {share} avec réponse, "
        "première réponse en {p50} (médiane) / {p90} (p90)"
    ),
    "stats_none": "Aucune question transmise ces {days} derniers jours.",
    "stats_triage": "tri",
    "stats_na": "—",
    "expert_usage": (
        "Usage : !expert join [spécialité] | leave | quiet 22:00-07:00 [fuseau] | quiet off | "
        "tz Europe/Paris"
    ),
    "expert_joined": (
        "{user} est volontaire pour {specialty} : PeerBot vous mentionnera pour les questions "
        "restées sans réponse (au plus {cap} fois par 24 h). !expert leave pour arrêter."
    ),
    "expert_already": "{user} est déjà volontaire dans ce salon.",
    "expert_left": "{user} n'est plus volontaire dans ce salon.",
    "expert_not_member": "{user} n'était pas volontaire dans ce salon.",
    "expert_wrong_specialty": "Ce salon est celui de {specialty}, pas de « {name} ».",
    "expert_quiet_set": "Heures calmes : {span} ({zone}) ; pas de mention pendant ce temps.",
    "expert_quiet_off": "Heures calmes supprimées.",
    "expert_tz_set": "Fuseau horaire : {zone}.",
    "expert_bad_tz": "« {zone} » n'est pas un fuseau horaire connu (par exemple Europe/Paris).",
    "expert_bad_quiet": "« {span} » n'est pas une plage comme 22:00-07:00.",
    "help_followup": (
        "Salons de spécialité : !unanswered liste les questions sans réponse ; !expert join | "
        "leave | quiet 22:00-07:00 | tz <fuseau> pour être mentionné(e) sur celles qui "
        "attendent ; administrateurs : !stats."
    ),
}

_EN_FOLLOWUP: Mapping[str, str] = {
    "wait_s": "{n} s",
    "wait_min": "{n} min",
    "wait_h": "{n} h",
    "wait_d": "{n} d",
    "esc_reminder": "This question is still waiting for an answer (for {age}).",
    "esc_ping": "{mentions}: you volunteered for this room, could you have a look?",
    "esc_nobody": "To be told about unanswered questions: !expert join in this room.",
    "esc_fallback_title": "Still unanswered after {age} in {room}",
    "esc_fallback_hidden": (
        "The text comes from an encrypted room and is not copied here: open the link to read it."
    ),
    "esc_fallback_link": "Answer in the forwarded question's thread",
    "esc_asker": (
        "{asker}: your question is still open, nobody has answered in {room} after {age} yet. "
        "It was also shown in the triage room {fallback}."
    ),
    "esc_asker_triage": (
        "{asker}: your question is still open, nobody has answered in {room} after {age} yet. "
        "The room's volunteers were reminded."
    ),
    "solve_reminder": (
        "{asker}: answers came to your question. If one of them helped, react with ✅ to that "
        "answer (or type !solved in this thread) and the question will be marked solved."
    ),
    "digest_title": "Digest of {room}: {open} open question(s), {solved} solved.",
    "digest_open": "Still open (oldest first):",
    "digest_solved": "Solved since the last digest:",
    "list_more": "… and {n} more.",
    "list_item": "{text} — {age}, {answers} answer(s)",
    "unanswered_title": "Unanswered questions in this room ({n}), oldest first:",
    "unanswered_none": "No unanswered question in this room.",
    "not_specialty_room": "Use this command in a specialty room.",
    "stats_title": "Forwarded questions by specialty:",
    "stats_item": (
        "{specialty}, {days} d: {questions} question(s), {share} answered, "
        "first answer after {p50} (median) / {p90} (p90)"
    ),
    "stats_none": "No question forwarded in the last {days} days.",
    "stats_triage": "triage",
    "stats_na": "—",
    "expert_usage": (
        "Usage: !expert join [specialty] | leave | quiet 22:00-07:00 [zone] | quiet off | "
        "tz Europe/Paris"
    ),
    "expert_joined": (
        "{user} volunteers for {specialty}: PeerBot will mention you on questions left "
        "unanswered (at most {cap} times in 24 h). !expert leave to stop."
    ),
    "expert_already": "{user} already volunteers in this room.",
    "expert_left": "{user} no longer volunteers in this room.",
    "expert_not_member": "{user} did not volunteer in this room.",
    "expert_wrong_specialty": "This room is {specialty}'s, not “{name}”'s.",
    "expert_quiet_set": "Quiet hours: {span} ({zone}); no mentions meanwhile.",
    "expert_quiet_off": "Quiet hours removed.",
    "expert_tz_set": "Time zone: {zone}.",
    "expert_bad_tz": "“{zone}” is not a known time zone (for example Europe/Paris).",
    "expert_bad_quiet": "“{span}” is not a span like 22:00-07:00.",
    "help_followup": (
        "Specialty rooms: !unanswered lists unanswered questions; !expert join | leave | "
        "quiet 22:00-07:00 | tz <zone> to be mentioned on those that wait; admins: !stats."
    ),
}

_CATALOGUES: Mapping[str, Mapping[str, str]] = {
    "fr": {**_FR, **_FR_FOLLOWUP},
    "en": {**_EN, **_EN_FOLLOWUP},
}


@dataclass(frozen=True)
class Texts:
    """The bot's sentences in one language."""

    language: str

    def s(self, key: str, **values: object) -> str:
        """One sentence, filled in."""
        return _CATALOGUES[self.language][key].format(**values)

    def forward(
        self,
        *,
        question: str,
        sender_name: str,
        sender_id: str,
        source_room: str,
        source_url: str,
        specialty: str | None,
    ) -> Rendered:
        """The notice posted in the specialty (or triage) room."""
        text, cut = shorten(question)
        text = defang(text)
        name, user, room = defang(sender_name), defang(sender_id), defang(source_room)
        title = self.s("forward_title") + (f" — {specialty}" if specialty else "")
        frm = self.s("forward_from", name=name, user=user, room=room)
        marker = self.s("shortened", total=len(question)) if cut else ""
        reply = self.s("forward_reply")
        quoted = "\n".join("> " + line for line in text.split("\n"))
        colon = self.s("colon")
        body = f"{title} {frm}{colon}\n{quoted}\n" + (f"{marker}\n" if marker else "")
        body += f"{reply}{colon} {source_url}"
        html_frm = self.s("forward_from", name=_e(name), user=_e(user), room=_e(room))
        html_out = (
            f"<p><strong>{_e(title)}</strong> {html_frm}</p>"
            f"<blockquote>{_quote_html(text)}</blockquote>"
            + (f"<p><em>{_e(marker)}</em></p>" if marker else "")
            + f"<p>{_link(source_url, reply)}</p>"
        )
        return Rendered(body, html_out)

    def acknowledgement(
        self,
        *,
        target_room: str,
        specialty: str | None,
        forward_url: str,
        words: Sequence[tuple[str, str, bool]] = (),
        reasons: Sequence[str] = (),
        related: Sequence[RelatedLine] = (),
    ) -> Rendered:
        """The notice in the asker's thread: where it went, why, and related threads."""
        room = defang(target_room)
        if specialty is None:
            first = self.s("ack_fallback", room=room)
        else:
            first = self.s("ack_specialty", room=room, specialty=defang(specialty))
        link_label = self.s("ack_link")
        parts_txt = [first, f"{link_label}{self.s('colon')} {forward_url}"]
        parts_html = [f"<p>{_e(first)} {_link(forward_url, link_label)}</p>"]
        if words:
            shown = [
                kw if exact else self.s("ack_fuzzy", keyword=kw, found=found)
                for kw, found, exact in words
            ]
            line = self.s("ack_words", words=", ".join(defang(w) for w in shown))
            parts_txt.append(line)
            parts_html.append(f"<p>{_e(line)}</p>")
        if reasons:
            line = self.s("ack_reasons", reasons="; ".join(defang(r) for r in reasons))
            parts_txt.append(line)
            parts_html.append(f"<p>{_e(line)}</p>")
        if related:
            txt, htm = self.related_list(related)
            parts_txt.append(txt)
            parts_html.append(htm)
        return Rendered("\n".join(parts_txt), "".join(parts_html))

    def age(self, days: float) -> str:
        """How old a thread is, shortly."""
        if days < 1:
            return self.s("related_age_today")
        if days < 60:
            return self.s("related_age_days", n=int(days))
        return self.s("related_age_months", n=int(days // 30))

    def related_list(self, items: Sequence[RelatedLine]) -> tuple[str, str]:
        """The related-threads list as text and HTML."""
        title = self.s("related_title")
        lines_txt = [title]
        lines_html = []
        for item in items:
            first, _ = shorten(item.first_line.split("\n", 1)[0].strip(), 120)
            first = defang(first)
            meta = f"{self.age(item.age_days)}, {self.s('related_replies', n=item.replies)}"
            mark = " ✅" if item.solved else ""
            lines_txt.append(f"- {first} ({meta}){mark} {item.url}")
            lines_html.append(f"<li>{_link(item.url, first)} ({_e(meta)}){mark}</li>")
        return "\n".join(lines_txt), f"<p>{_e(title)}</p><ul>{''.join(lines_html)}</ul>"

    def guard_held(
        self, findings: Sequence[Any], confirmable: bool, key: str = "guard_held"
    ) -> Rendered:
        """Why a question (or, with ``key="relay_held"``, a relay) is held, never quoting what
        was found."""
        seen: dict[str, Any] = {}
        for f in findings:
            seen.setdefault(f.kind, f)
        labels = [str(f.label) for f in seen.values()]
        first = self.s(key, findings=", ".join(labels) or "?")
        lines = [first]
        lines += [
            "- " + self.s("guard_why", label=str(f.label), why=str(f.why))
            for f in seen.values()
            if f.why
        ]
        if confirmable:
            lines.append(self.s("guard_held_confirm"))
        html_lines = [f"<p>{_e(first)}</p>"]
        items = [f"<li>{_e(line[2:])}</li>" for line in lines[1:] if line.startswith("- ")]
        if items:
            html_lines.append(f"<ul>{''.join(items)}</ul>")
        if confirmable:
            html_lines.append(f"<p>{_e(self.s('guard_held_confirm'))}</p>")
        return Rendered("\n".join(lines), "".join(html_lines))

    def relayed(
        self,
        *,
        head: str,
        text: str,
        author_name: str,
        author_id: str,
        room: str,
        url: str,
        asker_name: str = "",
        asker_id: str = "",
    ) -> Rendered:
        """A message relayed to the other thread: who wrote it, where, its text and a link.

        ``head`` is ``relay_answer`` (into the asker's thread: the asker's pill, the only
        mention), ``relay_from_asker`` or ``relay_from_other`` (into the forward's thread)."""
        quoted, cut = shorten(text)
        quoted = defang(quoted)
        who = author_name if author_name and author_name != author_id else ""
        name = defang(f"{who} ({author_id})" if who else author_id)
        pill = "\x00"
        line = self.s(head, asker=pill, name=name, room=defang(room))
        asker = defang(asker_name or asker_id)
        colon = self.s("colon")
        link = self.s("relay_link")
        marker = self.s("shortened", total=len(text)) if cut else ""
        body = line.replace(pill, asker) + colon + "\n"
        body += "\n".join("> " + part for part in quoted.split("\n")) + "\n"
        body += (f"{marker}\n" if marker else "") + f"{link}{colon} {url}"
        pill_html = f'<a href="https://matrix.to/#/{_e(asker_id)}">{_e(asker)}</a>'
        html_out = (
            f"<p>{_e(line).replace(pill, pill_html)}{_e(colon)}</p>"
            f"<blockquote>{_quote_html(quoted)}</blockquote>"
            + (f"<p><em>{_e(marker)}</em></p>" if marker else "")
            + f"<p>{_link(url, link)}</p>"
        )
        return Rendered(body, html_out)

    def forward_state(self, forward: Mapping[str, Any], answers: int, solved: bool) -> Rendered:
        """The forward's text with its state at a glance (answers so far, solved)."""
        parts = [self.s("forward_state_answers", n=answers)] if answers else []
        if solved:
            parts.append(self.s("forward_state_solved"))
        state = " · ".join(parts)
        body = str(forward.get("body", ""))
        formatted = str(forward.get("formatted_body") or _e(body))
        if not state:
            return Rendered(body, formatted)
        return Rendered(f"{body}\n{state}", f"{formatted}<p><strong>{_e(state)}</strong></p>")

    def lines(self, lines: Sequence[str]) -> Rendered:
        """Several lines of already-worded text (command answers), escaped."""
        safe = [defang(line) for line in lines]
        return Rendered("\n".join(safe), "<br>".join(_e(line) for line in safe))

    def startup_problems(self, problems: Sequence[str], limit: int = 8) -> Rendered:
        """The one short message posted to admin_room when start-up checks find problems."""
        shown = list(problems[:limit])
        lines = [self.s("startup_problems", n=len(problems))] + [f"- {p}" for p in shown]
        if len(problems) > limit:
            lines.append(self.s("startup_more", n=len(problems) - limit))
        safe = [defang(line) for line in lines]
        items = "".join(f"<li>{_e(line[2:])}</li>" for line in safe[1 : 1 + len(shown)])
        html_out = f"<p>{_e(safe[0])}</p><ul>{items}</ul>"
        if len(problems) > limit:
            html_out += f"<p>{_e(safe[-1])}</p>"
        return Rendered("\n".join(safe), html_out)

    def plain(self, key: str, **values: object) -> Rendered:
        """A one-sentence notice."""
        text = self.s(key, **values)
        return Rendered(text, _e(text))


def texts_for(language: str) -> Texts:
    """The sentences for a configured language."""
    if language not in _CATALOGUES:
        raise ValueError(f"unknown language {language!r}")
    return Texts(language)
