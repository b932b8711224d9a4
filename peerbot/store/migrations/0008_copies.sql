-- Schema 8: find a question from any copy of it (its forward, or a !route move copy) by the
-- copy's event: a message under an earlier copy still reaches the asker after a move.
CREATE INDEX effects_event ON effects (event_id);
-- (No column change: thread_messages.relay_state also takes 'waiting' from now on, for a message
-- written before its question's forward existed, relayed once it does.)
