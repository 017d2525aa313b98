-- Accounts: logins, sessions, orders and trades, and top-of-book depth.
-- Orders, balances and trades are the article's "never cache" data: they are
-- read from here on every request.

-- A PHC string ($argon2id$...); NULL: the user cannot log in.
ALTER TABLE users ADD COLUMN password_hash TEXT;
-- Cash available to buy with; an order never takes it below zero.
ALTER TABLE users ADD COLUMN balance NUMERIC(18, 2) NOT NULL DEFAULT 100000.00 CHECK (balance >= 0);

CREATE TABLE sessions (
    -- SHA-256 of the token, hex: a copy of this table (or of Redis) does not
    -- hand out working tokens.
    token_hash     TEXT    PRIMARY KEY,
    user_id        BIGINT  NOT NULL REFERENCES users (id),
    expires_at_ms  BIGINT  NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE trades (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id        BIGINT  NOT NULL REFERENCES users (id),
    instrument_id  INTEGER NOT NULL REFERENCES instruments (id),
    side           TEXT    NOT NULL CHECK (side IN ('buy', 'sell')),
    qty            BIGINT  NOT NULL CHECK (qty > 0),
    price          NUMERIC(18, 2) NOT NULL,
    amount         NUMERIC(18, 2) NOT NULL,
    executed_at_ms BIGINT  NOT NULL
);
CREATE INDEX trades_user ON trades (user_id, id DESC);

-- Top of book, written through by the price feed. JSON: {"bids":[...],"asks":[...]}.
CREATE TABLE market_depth (
    instrument_id  INTEGER PRIMARY KEY REFERENCES instruments (id),
    levels         TEXT    NOT NULL,
    version        BIGINT  NOT NULL
);
