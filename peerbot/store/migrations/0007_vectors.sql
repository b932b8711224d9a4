-- Schema 7: one embedding vector per question, for the hybrid related-threads engine.
-- Derived from the question's text, so it goes with it: erase_question deletes it (and the
-- foreign key cascades, should a question row be deleted some other way).
CREATE TABLE question_vectors (
    event_id   TEXT PRIMARY KEY REFERENCES questions (event_id) ON DELETE CASCADE,
    model      TEXT NOT NULL,      -- the embedding model (peerbot.core.semantic.MODELS)
    revision   TEXT NOT NULL,      -- the text embedded: the latest edit's event ID, else event_id
    vector     BLOB NOT NULL,      -- peerbot.core.semantic.encode_vector
    updated_at INTEGER NOT NULL    -- ms since the epoch
);
