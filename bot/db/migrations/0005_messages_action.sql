-- Store each answer's action (knowledge or skill) with its route: a route name alone does not say which path
-- answered (a custom route may be either), and the UI used to guess it from the adapter and the sources.
-- Rows written before this migration keep NULL; readers fall back to that guess for them.
ALTER TABLE messages ADD COLUMN action text CHECK (action IN ('knowledge', 'skill'));
