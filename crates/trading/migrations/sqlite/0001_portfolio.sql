-- The embedded schema. SQLite has no exact decimal type, so prices are stored
-- as integer hundredths (cents/paise) and all arithmetic stays in integers;
-- the service turns them into decimals with two places.
CREATE TABLE users (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    email       TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE instruments (
    id                INTEGER PRIMARY KEY,
    symbol            TEXT NOT NULL UNIQUE,
    name              TEXT NOT NULL,
    last_price_cents  INTEGER NOT NULL CHECK (last_price_cents > 0),
    price_updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE holdings (
    user_id        INTEGER NOT NULL REFERENCES users (id),
    instrument_id  INTEGER NOT NULL REFERENCES instruments (id),
    qty            INTEGER NOT NULL CHECK (qty > 0),
    PRIMARY KEY (user_id, instrument_id)
) WITHOUT ROWID;

CREATE INDEX holdings_instrument ON holdings (instrument_id);
