-- Accounts: logins, sessions, orders and trades, and top-of-book depth.
-- Money in integer hundredths, as in 0001.

-- A PHC string ($argon2id$...); NULL: the user cannot log in.
ALTER TABLE users ADD COLUMN password_hash TEXT;
-- Cash available to buy with; an order never takes it below zero.
ALTER TABLE users ADD COLUMN balance_cents INTEGER NOT NULL DEFAULT 10000000 CHECK (balance_cents >= 0);

CREATE TABLE sessions (
    -- SHA-256 of the token, hex: a copy of this table (or of Redis) does not
    -- hand out working tokens.
    token_hash     TEXT    PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users (id),
    expires_at_ms  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE trades (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id        INTEGER NOT NULL REFERENCES users (id),
    instrument_id  INTEGER NOT NULL REFERENCES instruments (id),
    side           TEXT    NOT NULL CHECK (side IN ('buy', 'sell')),
    qty            INTEGER NOT NULL CHECK (qty > 0),
    price_cents    INTEGER NOT NULL,
    amount_cents   INTEGER NOT NULL,
    executed_at_ms INTEGER NOT NULL
);
CREATE INDEX trades_user ON trades (user_id, id DESC);

-- Top of book, written through by the price feed. JSON: {"bids":[...],"asks":[...]}.
CREATE TABLE market_depth (
    instrument_id  INTEGER PRIMARY KEY REFERENCES instruments (id),
    levels         TEXT    NOT NULL,
    version        INTEGER NOT NULL
);
