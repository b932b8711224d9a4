-- Schema 6: what became of each message's relay to the other thread of its question.
-- relayed | held (a guard found patient data) | refused (encrypted -> unencrypted, no consent)
-- | ignored (nothing to relay: no forward yet); NULL for messages recorded before schema 6.
ALTER TABLE thread_messages ADD COLUMN relay_state TEXT;
CREATE INDEX effects_relay ON effects (question_id, kind, state);
