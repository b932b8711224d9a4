-- Schema 2: thread state for related threads, guards, admin overrides, event types in the outbox.
ALTER TABLE questions ADD COLUMN replies INTEGER NOT NULL DEFAULT 0;
ALTER TABLE questions ADD COLUMN solved INTEGER NOT NULL DEFAULT 0;
ALTER TABLE questions ADD COLUMN solved_by TEXT;          -- the reaction or command that solved it
ALTER TABLE questions ADD COLUMN revision TEXT;           -- the latest edit's event ID
ALTER TABLE questions ADD COLUMN guard_override INTEGER NOT NULL DEFAULT 0;
ALTER TABLE questions ADD COLUMN corrected INTEGER NOT NULL DEFAULT 0;   -- moved by an admin
CREATE INDEX questions_room ON questions (room_id, created_ts);

ALTER TABLE effects ADD COLUMN event_type TEXT NOT NULL DEFAULT 'm.room.message';

-- Specialties changed in chat: they win over bot.yaml for the names they touch.
CREATE TABLE route_overrides (
    name_key   TEXT PRIMARY KEY,     -- casefolded name
    name       TEXT NOT NULL,
    room       TEXT NOT NULL,
    keywords   TEXT NOT NULL,        -- JSON list
    removed    INTEGER NOT NULL DEFAULT 0,
    changed_by TEXT NOT NULL,
    changed_at INTEGER NOT NULL
);

-- Intake switched on or off in chat, per room.
CREATE TABLE intake_overrides (
    room_id    TEXT PRIMARY KEY,
    enabled    INTEGER NOT NULL,
    trigger    TEXT NOT NULL,
    hashtags   TEXT NOT NULL,        -- JSON list
    changed_by TEXT NOT NULL,
    changed_at INTEGER NOT NULL
);
