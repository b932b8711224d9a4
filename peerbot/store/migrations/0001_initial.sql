-- Schema 1: sync state, handled events, questions and the outbox of effects.
CREATE TABLE kv (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Every event the bot has acted on, so that an event delivered twice is a no-op.
CREATE TABLE handled_events (
    event_id   TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL,
    handled_at INTEGER NOT NULL
);

-- A question: the event that was asked (a thread root), where it went and what the bot sent.
CREATE TABLE questions (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT NOT NULL UNIQUE,
    room_id          TEXT NOT NULL,
    sender           TEXT,
    sender_name      TEXT,
    body             TEXT,               -- NULL until fetched (a thread root named by a reply)
    created_ts       INTEGER NOT NULL DEFAULT 0,
    trigger_event_id TEXT NOT NULL,      -- the message that raised it (itself, or a reply)
    state            TEXT NOT NULL,      -- new | forwarding | done | failed
    specialty        TEXT,
    target_room      TEXT,
    decision         TEXT,               -- JSON: keywords and reasons
    forward_event_id TEXT,
    ack_event_id     TEXT,
    error            TEXT,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX questions_state ON questions (state, seq);

-- The outbox: every message is recorded here before it is sent, with its transaction ID.
CREATE TABLE effects (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    tx_id       TEXT NOT NULL UNIQUE,
    question_id TEXT,
    kind        TEXT NOT NULL,           -- forward | ack | notice
    room_id     TEXT NOT NULL,
    content     TEXT NOT NULL,           -- JSON
    state       TEXT NOT NULL,           -- pending | done | failed
    event_id    TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX effects_pending ON effects (state, seq);
CREATE INDEX effects_question ON effects (question_id);
