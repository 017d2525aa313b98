-- Write paths: watchlists (written behind), row versions for write-through.
CREATE TABLE watchlists (
    user_id    INTEGER PRIMARY KEY REFERENCES users (id),
    -- A JSON array of symbols, as the API sends it.
    symbols    TEXT    NOT NULL,
    -- The write-behind version: a newer write always wins, even if an older
    -- one is delivered again after it.
    version    INTEGER NOT NULL,
    updated_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Bumped by every price update; the cache keeps the highest.
ALTER TABLE instruments ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
