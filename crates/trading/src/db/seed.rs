//! Generated, realistic data: users, instruments with prices, holdings.
//!
//! Deterministic for a given seed, so two runs (and two machines) measure the
//! same data. Popular instruments are held far more often than obscure ones,
//! as on a real exchange.

use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sqlx::{AssertSqlSafe, QueryBuilder};

use super::dialect::on_db;
use super::{Db, DbError};

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct SeedPlan {
    /// Number of users (ids 1..=users).
    pub users: u64,
    /// Number of instruments.
    pub instruments: u32,
    /// Random seed.
    pub rng_seed: u64,
    /// Whether to draw a progress bar on the terminal.
    pub progress: bool,
}

/// Well-known symbols first, so the data reads like the article's.
const KNOWN: &[(&str, &str)] = &[
    ("RELIANCE", "Reliance Industries"),
    ("TCS", "Tata Consultancy Services"),
    ("HDFCBANK", "HDFC Bank"),
    ("INFY", "Infosys"),
    ("ICICIBANK", "ICICI Bank"),
    ("SBIN", "State Bank of India"),
    ("BHARTIARTL", "Bharti Airtel"),
    ("ITC", "ITC"),
    ("LT", "Larsen & Toubro"),
    ("HINDUNILVR", "Hindustan Unilever"),
];

const FIRST: &[&str] = &[
    "Aarav", "Vivaan", "Aditya", "Ananya", "Diya", "Ishaan", "Kavya", "Meera", "Rohan", "Saanvi",
    "Arjun", "Priya", "Neha", "Vikram", "Zara", "Kabir", "Riya", "Dev", "Tara", "Nikhil",
];
const LAST: &[&str] = &[
    "Sharma", "Verma", "Iyer", "Nair", "Patel", "Reddy", "Gupta", "Singh", "Das", "Menon", "Rao",
    "Joshi", "Kapoor", "Bose", "Chopra",
];

/// Rows per multi-row INSERT (3 parameters each; SQLite allows 32,766).
const CHUNK: usize = 5_000;

struct Instrument {
    id: i32,
    symbol: String,
    name: String,
    price_cents: i64,
}

fn instruments(plan: &SeedPlan, rng: &mut StdRng) -> Vec<Instrument> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(plan.instruments as usize);
    for i in 0..plan.instruments {
        let (symbol, name) = match KNOWN.get(i as usize) {
            Some((s, n)) => (s.to_string(), n.to_string()),
            None => loop {
                let len = rng.random_range(3..=6);
                let s: String = (0..len)
                    .map(|_| rng.random_range(b'A'..=b'Z') as char)
                    .collect();
                if !KNOWN.iter().any(|(k, _)| *k == s) && seen.insert(s.clone()) {
                    let name = format!("{}{} Ltd", &s[..1], s[1..].to_lowercase());
                    break (s, name);
                }
            },
        };
        // Log-uniform between 10.00 and 5,000.00.
        let price = (10f64.ln() + rng.random::<f64>() * (5000f64.ln() - 10f64.ln())).exp();
        out.push(Instrument {
            id: i as i32 + 1,
            symbol,
            name,
            price_cents: (price * 100.0).round() as i64,
        });
    }
    out
}

/// Picks an instrument index with a strong skew towards low indices.
fn popular(rng: &mut StdRng, n: u32) -> u32 {
    let u: f64 = rng.random();
    ((u * u * u) * n as f64) as u32 % n
}

fn bar(plan: &SeedPlan, len: u64, what: &str) -> ProgressBar {
    if !plan.progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>12} [{bar:40}] {human_pos}/{human_len} ({per_sec}, {eta} left)",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// Users and their holdings, generated a chunk at a time.
struct Generator {
    rng: StdRng,
    plan: SeedPlan,
    next_user: u64,
}

type UserRow = (i64, String, String);
type HoldingRow = (i64, i32, i64);

impl Generator {
    fn next_chunk(&mut self) -> Option<(Vec<UserRow>, Vec<HoldingRow>)> {
        if self.next_user > self.plan.users {
            return None;
        }
        let last = (self.next_user + CHUNK as u64 - 1).min(self.plan.users);
        let rng = &mut self.rng;
        let mut users = Vec::with_capacity(CHUNK);
        let mut holdings = Vec::with_capacity(CHUNK * 15);
        for id in self.next_user..=last {
            let first = FIRST[rng.random_range(0..FIRST.len())];
            let lastname = LAST[rng.random_range(0..LAST.len())];
            users.push((
                id as i64,
                format!("{first} {lastname}"),
                format!("user{id}@example.com"),
            ));
            let count = rng.random_range(10..=20);
            let mut held = std::collections::BTreeSet::new();
            while held.len() < count {
                held.insert(popular(rng, self.plan.instruments));
            }
            for idx in held {
                holdings.push((id as i64, idx as i32 + 1, rng.random_range(1..=500)));
            }
        }
        self.next_user = last + 1;
        Some((users, holdings))
    }
}

/// Generates the data in one transaction, so that an interrupted seed leaves
/// the database empty (and the next start seeds again) rather than half full.
/// The database must be empty (see [`reset`]).
pub async fn seed(db: &Db, plan: SeedPlan) -> Result<(), DbError> {
    if plan.instruments < 20 {
        return Err(DbError::Setup(
            "seed at least 20 instruments (users hold 10 to 20 each)".into(),
        ));
    }
    let mut rng = StdRng::seed_from_u64(plan.rng_seed);
    let instruments = instruments(&plan, &mut rng);
    let mut users = Generator {
        rng,
        plan,
        next_user: 1,
    };
    let pb = bar(&plan, plan.users, "users");
    // Two loaders: PostgreSQL lifts its statement timeout, makes replicas
    // that start together wait for one seeder, and bulk-loads through
    // arrays; SQLite has neither statement timeout nor arrays, and stores
    // money as cents.
    match db {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            // Bulk loading takes longer than the service's statement timeout.
            sqlx::query("SET LOCAL statement_timeout = 0")
                .execute(&mut *tx)
                .await?;
            // Replicas starting together on an empty database: one seeds,
            // the others wait here and then find it seeded.
            sqlx::query("SELECT pg_advisory_xact_lock(4242)")
                .execute(&mut *tx)
                .await?;
            let seeded: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users)")
                .fetch_one(&mut *tx)
                .await?;
            if seeded {
                pb.finish_and_clear();
                return Ok(());
            }
            for chunk in instruments.chunks(CHUNK / 2) {
                let mut q =
                    QueryBuilder::new("INSERT INTO instruments (id, symbol, name, last_price) ");
                q.push_values(chunk, |mut b, i| {
                    b.push_bind(i.id)
                        .push_bind(&i.symbol)
                        .push_bind(&i.name)
                        .push_bind(rust_decimal::Decimal::new(i.price_cents, 2));
                });
                q.build().execute(&mut *tx).await?;
            }
            while let Some((users, holdings)) = users.next_chunk() {
                // UNNEST: one statement and three array parameters per table,
                // whatever the row count.
                let (ids, (names, emails)): (Vec<i64>, (Vec<String>, Vec<String>)) =
                    users.into_iter().map(|(i, n, e)| (i, (n, e))).unzip();
                sqlx::query("INSERT INTO users (id, name, email) SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[])")
                    .bind(&ids)
                    .bind(&names)
                    .bind(&emails)
                    .execute(&mut *tx)
                    .await?;
                let (uids, (iids, qtys)): (Vec<i64>, (Vec<i32>, Vec<i64>)) =
                    holdings.into_iter().map(|(u, i, q)| (u, (i, q))).unzip();
                sqlx::query(
                    "INSERT INTO holdings (user_id, instrument_id, qty) SELECT * FROM UNNEST($1::bigint[], $2::int[], $3::bigint[])",
                )
                .bind(&uids)
                .bind(&iids)
                .bind(&qtys)
                .execute(&mut *tx)
                .await?;
                pb.inc(ids.len() as u64);
            }
            tx.commit().await?;
        }
        Db::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            for chunk in instruments.chunks(CHUNK / 2) {
                let mut q = QueryBuilder::new(
                    "INSERT INTO instruments (id, symbol, name, last_price_cents) ",
                );
                q.push_values(chunk, |mut b, i| {
                    b.push_bind(i.id)
                        .push_bind(&i.symbol)
                        .push_bind(&i.name)
                        .push_bind(i.price_cents);
                });
                q.build().execute(&mut *tx).await?;
            }
            while let Some((users, holdings)) = users.next_chunk() {
                let mut q = QueryBuilder::new("INSERT INTO users (id, name, email) ");
                q.push_values(&users, |mut b, (id, name, email)| {
                    b.push_bind(*id).push_bind(name).push_bind(email);
                });
                q.build().execute(&mut *tx).await?;
                for chunk in holdings.chunks(CHUNK) {
                    let mut q =
                        QueryBuilder::new("INSERT INTO holdings (user_id, instrument_id, qty) ");
                    q.push_values(chunk, |mut b, (u, i, qty)| {
                        b.push_bind(*u).push_bind(*i).push_bind(*qty);
                    });
                    q.build().execute(&mut *tx).await?;
                }
                pb.inc(users.len() as u64);
            }
            tx.commit().await?;
        }
    }
    pb.finish_and_clear();
    Ok(())
}

/// Deletes all generated data (children first).
pub async fn reset(db: &Db) -> Result<(), DbError> {
    for table in ["holdings", "instruments", "users"] {
        let sql = AssertSqlSafe(format!("DELETE FROM {table}"));
        on_db!(db, pool => {
            sqlx::query(sql).execute(pool).await?;
        });
    }
    Ok(())
}
