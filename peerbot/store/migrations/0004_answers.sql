-- Schema 4: the conversation around a question, in both threads (the asker's and the forward's).
-- Every message a person writes in either thread, once; the relay that copies it to the other
-- thread is an outbox effect (relay_tx_id), so a crash neither loses nor repeats it.
CREATE TABLE thread_messages (
    event_id       TEXT PRIMARY KEY,   -- the message as its author wrote it
    question_id    TEXT NOT NULL,      -- the question (the asker's thread root)
    room_id        TEXT NOT NULL,
    side           TEXT NOT NULL,      -- origin (asker's thread) | forward (forward's thread)
    sender         TEXT NOT NULL,
    ts             INTEGER NOT NULL,   -- ms since the epoch (origin_server_ts)
    answer         INTEGER NOT NULL,   -- 1 when written by someone other than the asker
    relay_tx_id    TEXT,               -- the effect copying it into the other thread, if any
    relay_event_id TEXT                -- that copy, once sent
);
CREATE INDEX thread_messages_question ON thread_messages (question_id, ts);
CREATE INDEX thread_messages_relay ON thread_messages (relay_event_id);

ALTER TABLE questions ADD COLUMN answers INTEGER NOT NULL DEFAULT 0;   -- answer messages
ALTER TABLE questions ADD COLUMN first_answer_ts INTEGER;             -- ms, first answer
ALTER TABLE questions ADD COLUMN last_activity_ts INTEGER;            -- ms, last message in either thread
ALTER TABLE questions ADD COLUMN forwarded_ts INTEGER;                -- ms, forward sent
ALTER TABLE questions ADD COLUMN solved_ts INTEGER;                   -- ms, marked solved
