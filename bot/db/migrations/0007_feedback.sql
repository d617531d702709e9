-- The team's verdict on an answer (issue #18): thumbs up or down, optionally with the reply it should have been.
-- A row points at the assistant message, not at (session, turn): clearing a session deletes its messages and
-- numbers the next turns from 1 again, so a turn number alone could hand an old rating to a new answer. Deleting the
-- session or the message deletes its feedback. One row per answer per owner; a new rating replaces the old one.
CREATE TABLE feedback (
    id          bigserial PRIMARY KEY,
    message_id  bigint NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    owner       text NOT NULL,
    rating      text NOT NULL CHECK (rating IN ('up', 'down')),
    correction  text CHECK (correction IS NULL OR btrim(correction) <> ''),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (message_id, owner)
);
CREATE INDEX feedback_owner_created_idx ON feedback (owner, created_at DESC);
CREATE INDEX feedback_created_idx ON feedback (created_at);
