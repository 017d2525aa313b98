-- Users, instruments with their last price, and who holds what.
-- Money is NUMERIC: exact decimals, never binary floats.
CREATE TABLE users (
    id          BIGINT PRIMARY KEY,
    name        TEXT NOT NULL,
    email       TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE instruments (
    id               INTEGER PRIMARY KEY,
    symbol           TEXT NOT NULL UNIQUE,
    name             TEXT NOT NULL,
    last_price       NUMERIC(18, 2) NOT NULL CHECK (last_price > 0),
    price_updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE holdings (
    user_id        BIGINT  NOT NULL REFERENCES users (id),
    instrument_id  INTEGER NOT NULL REFERENCES instruments (id),
    qty            BIGINT  NOT NULL CHECK (qty > 0),
    PRIMARY KEY (user_id, instrument_id)
);

CREATE INDEX holdings_instrument ON holdings (instrument_id);
