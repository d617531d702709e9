-- Access to a collection is configured (RAGTUNE_RESTRICTED_COLLECTIONS, bot/server/auth.py), never stored: these
-- two columns were written by nothing and read by nothing but a listing.
ALTER TABLE collections DROP COLUMN restricted, DROP COLUMN owner;
