-- Write paths: watchlists (written behind), row versions for write-through.
CREATE TABLE watchlists (
    user_id    BIGINT PRIMARY KEY REFERENCES users (id),
    -- A JSON array of symbols, as the API sends it.
    symbols    TEXT   NOT NULL,
    -- The write-behind version: a newer write always wins, even if an older
    -- one is delivered again after it.
    version    BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Bumped by every price update; the cache keeps the highest.
ALTER TABLE instruments ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
