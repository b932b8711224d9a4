-- Schema 3: encrypted events the bot could not decrypt yet (never their content).
CREATE TABLE undecryptable (
    event_id   TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL,
    sender     TEXT NOT NULL,
    session_id TEXT NOT NULL,
    sender_key TEXT NOT NULL DEFAULT '',
    first_seen INTEGER NOT NULL,      -- ms since the epoch
    attempts   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX undecryptable_session ON undecryptable (room_id, session_id);
