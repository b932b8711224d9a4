"""The async application: wiring, the sync loop, handlers, the question pipeline, lanes,
the outbox, chat commands, history import."""
