-- Schema 5: follow-ups. Every deadline lives here, never in memory: escalation steps and the
-- ✅ reminder per question, digests per room and local date. A row is marked done in the same
-- transaction that records its messages in the outbox (their tx IDs derived from its key), so a
-- restart neither loses nor repeats one.
CREATE TABLE due_actions (
    key         TEXT PRIMARY KEY,        -- escalate:<question>:<step> | solve:<question> | digest:<room>:<date>
    kind        TEXT NOT NULL,           -- escalate | solve | digest
    question_id TEXT,
    room_id     TEXT NOT NULL,           -- the specialty room (escalate, digest) or the asker's room
    step        INTEGER NOT NULL DEFAULT 0,
    last_step   INTEGER NOT NULL DEFAULT 0, -- 1 for the last escalation step
    due_ts      INTEGER NOT NULL,        -- ms since the epoch
    state       TEXT NOT NULL,           -- pending | done | skipped
    done_ts     INTEGER,
    note        TEXT                     -- why it was skipped
);
CREATE INDEX due_actions_pending ON due_actions (state, due_ts);
CREATE INDEX due_actions_question ON due_actions (question_id);
CREATE INDEX due_actions_room ON due_actions (kind, room_id, state);

-- Volunteer experts of a specialty room (!expert join / leave).
CREATE TABLE experts (
    room_id   TEXT NOT NULL,
    user_id   TEXT NOT NULL,
    specialty TEXT NOT NULL,
    joined_ts INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- An expert's own settings, for every room (!expert tz / quiet).
CREATE TABLE expert_settings (
    user_id     TEXT PRIMARY KEY,
    timezone    TEXT,
    quiet_start INTEGER,                 -- minutes of the local day
    quiet_end   INTEGER
);

-- Every ping of an expert: least recently pinged first, and the daily cap.
CREATE TABLE expert_pings (
    user_id     TEXT NOT NULL,
    room_id     TEXT NOT NULL,
    question_id TEXT,
    ts          INTEGER NOT NULL
);
CREATE INDEX expert_pings_user ON expert_pings (user_id, ts);
