//! The verbs, each a thin layer over [`larder::admin::Admin`].

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::connect::Connection;
use crate::{Outcome, print, scrape};

/// The article's floor: "if it's below 80%, rethink your strategy".
const HIT_RATE_FLOOR: f64 = 0.8;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// An entry as stored in Redis: the value as JSON, its header (fresh
    /// until, grace until, load time, version, tags), TTL and size, and any
    /// pending write-behind write or load lease.
    Inspect {
        /// The family (a section of the cache config).
        family: String,
        /// The key's parts, in the template's order (`portfolio:{user_id}`
        /// takes one: `42`).
        parts: Vec<String>,
    },
    /// Invalidates through the library: Redis, the leases of loads in
    /// progress, and every process's L1 (over the bus).
    Invalidate {
        /// One entry: the family, then its key parts.
        #[arg(long, num_args = 1.., value_names = ["FAMILY", "PART"], conflicts_with_all = ["tag", "pattern"])]
        key: Option<Vec<String>>,
        /// Every entry carrying a tag: the tag template, then its parts
        /// (`--tag 'user:{user_id}' 42`).
        #[arg(long, num_args = 1.., value_names = ["TEMPLATE", "PART"], conflicts_with = "pattern")]
        tag: Option<Vec<String>>,
        /// Every entry of a family whose parts match, `*` matching any
        /// part (`--pattern order 42 '*'`); prints how many were removed.
        #[arg(long, num_args = 1.., value_names = ["FAMILY", "PART"])]
        pattern: Option<Vec<String>>,
    },
    /// Per family: keys, bytes and TTL spread from a bounded SCAN sample,
    /// and with --metrics the hit rate across instances (flagged under 80%).
    Stats {
        /// Only these families (default: all of the config).
        families: Vec<String>,
        /// Most keys sampled per family.
        #[arg(long, default_value_t = 10_000)]
        sample: u64,
        /// `/metrics` URLs of the service's instances (http only).
        #[arg(long, num_args = 1.., value_delimiter = ',')]
        metrics: Vec<String>,
    },
    /// The write-behind queue.
    #[command(subcommand, name = "write-behind")]
    WriteBehind(WriteBehind),
    /// The invalidation bus.
    #[command(subcommand)]
    Bus(Bus),
}

#[derive(Debug, Subcommand)]
pub enum WriteBehind {
    /// Queue length, writes in progress per worker, lag, dead letters.
    Status {
        /// Only these families (default: the write-behind ones).
        families: Vec<String>,
    },
    /// Writes the workers gave up on.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLetters),
    /// Waits until the queue is empty (the service's workers persist it),
    /// up to --timeout; exit code 3 if it is not.
    Drain {
        /// The family.
        family: String,
        /// How long to wait.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadLetters {
    /// Lists them, decoded, oldest first.
    List {
        /// The family.
        family: String,
        /// Most shown.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Puts them back on the queue with their original versions.
    Replay {
        /// The family.
        family: String,
        /// Dead-letter ids (as `list` shows them).
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        /// Every dead letter of the family.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum Bus {
    /// Prints invalidations as they happen, until interrupted.
    Tail {
        /// Start from this bus entry id instead of now (`0` for the oldest
        /// kept).
        #[arg(long)]
        from: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

pub async fn run(command: Command, conn: &Connection, json: bool) -> anyhow::Result<Outcome> {
    let cache = conn.open().await?;
    let admin = cache.admin();
    match command {
        Command::Inspect { family, parts } => {
            let found = admin.inspect(&family, &parts).await?;
            let absent = found.entry.is_none() && found.pending.is_none();
            if json {
                emit(&found)?;
            } else {
                print::inspection(&found);
            }
            Ok(if absent {
                Outcome::NotFound
            } else {
                Outcome::Ok
            })
        }
        Command::Invalidate { key, tag, pattern } => {
            #[derive(Serialize)]
            struct Done<'a> {
                invalidated: &'a str,
                target: String,
                #[serde(skip_serializing_if = "Option::is_none")]
                removed: Option<u64>,
            }
            let done = if let Some(args) = key {
                let (family, parts) = split_first(&args, "--key FAMILY PART...")?;
                admin.invalidate_key(family, parts).await?;
                Done {
                    invalidated: "key",
                    target: admin.key(family, parts)?,
                    removed: None,
                }
            } else if let Some(args) = tag {
                let (template, parts) = split_first(&args, "--tag TEMPLATE PART...")?;
                admin.invalidate_tag(template, parts).await?;
                Done {
                    invalidated: "tag",
                    target: admin.tag(template, parts)?,
                    removed: None,
                }
            } else if let Some(args) = pattern {
                let (family, parts) = split_first(&args, "--pattern FAMILY PART...")?;
                let removed = admin.invalidate_pattern(family, parts).await?;
                Done {
                    invalidated: "pattern",
                    target: format!("{family} {}", parts.join(" ")),
                    removed: Some(removed),
                }
            } else {
                bail!("say what to invalidate: --key, --tag or --pattern");
            };
            if json {
                emit(&done)?;
            } else {
                match done.removed {
                    Some(n) => println!("invalidated {}: {n} key(s) removed", done.target),
                    None => println!("invalidated {} {}", done.invalidated, done.target),
                }
            }
            Ok(Outcome::Ok)
        }
        Command::Stats {
            families,
            sample,
            metrics,
        } => {
            let families = if families.is_empty() {
                let mut all: Vec<String> = cache.family_names().map(str::to_string).collect();
                all.sort();
                all
            } else {
                families
            };
            let rates = if metrics.is_empty() {
                None
            } else {
                Some(scrape::hit_rates(&metrics).await?)
            };
            #[derive(Serialize)]
            struct Row {
                #[serde(flatten)]
                sample: larder::admin::FamilySample,
                hit_rate: Option<f64>,
                requests: Option<f64>,
                below_floor: bool,
            }
            let mut rows = Vec::new();
            for family in &families {
                let bar = progress(json, family);
                let s = admin
                    .sample(family, sample, |n| bar.set_position(n))
                    .await
                    .with_context(|| format!("sampling {family}"))?;
                bar.finish_and_clear();
                let r = rates.as_ref().and_then(|r| r.get(family));
                let hit_rate = r.and_then(|r| r.hit_rate());
                rows.push(Row {
                    sample: s,
                    hit_rate,
                    requests: r.map(|r| r.total),
                    below_floor: hit_rate.is_some_and(|h| h < HIT_RATE_FLOOR),
                });
            }
            let below = rows.iter().any(|r| r.below_floor);
            if json {
                emit(&rows)?;
            } else {
                print::stats_header(conn.namespace(), rates.is_some());
                for r in &rows {
                    print::stats_row(&r.sample, r.hit_rate, r.requests, r.below_floor);
                }
                if below {
                    println!(
                        "\n! under {:.0}%: \"if it's below 80%, rethink your strategy\"",
                        HIT_RATE_FLOOR * 100.0
                    );
                }
            }
            Ok(if below {
                Outcome::CheckFailed
            } else {
                Outcome::Ok
            })
        }
        Command::WriteBehind(WriteBehind::Status { families }) => {
            let families = if families.is_empty() {
                write_behind_families(conn)?
            } else {
                families
            };
            let mut all = Vec::new();
            for f in &families {
                all.push(admin.write_behind_status(f).await?);
            }
            if json {
                emit(&all)?;
            } else {
                for s in &all {
                    print::queue_status(s);
                }
            }
            Ok(Outcome::Ok)
        }
        Command::WriteBehind(WriteBehind::DeadLetters(DeadLetters::List { family, limit })) => {
            let dead = admin.dead_letters(&family, limit).await?;
            if json {
                emit(&dead)?;
            } else if dead.is_empty() {
                println!("no dead letters for {family}");
            } else {
                for d in &dead {
                    print::dead_letter(d);
                }
            }
            Ok(Outcome::Ok)
        }
        Command::WriteBehind(WriteBehind::DeadLetters(DeadLetters::Replay {
            family,
            ids,
            all,
        })) => {
            let ids = if all {
                // Page by page: each replay removes what it put back.
                let mut ids = Vec::new();
                loop {
                    let page = admin.dead_letters(&family, 1000).await?;
                    let fresh: Vec<String> = page
                        .into_iter()
                        .map(|d| d.id)
                        .filter(|id| !ids.contains(id))
                        .collect();
                    if fresh.is_empty() {
                        break;
                    }
                    for id in &fresh {
                        admin.replay_dead_letter(&family, id).await?;
                    }
                    ids.extend(fresh);
                }
                ids.into_iter().map(|id| (id, true)).collect::<Vec<_>>()
            } else {
                let mut out = Vec::new();
                for id in ids {
                    let found = admin.replay_dead_letter(&family, &id).await?;
                    out.push((id, found));
                }
                out
            };
            let missing = ids.iter().filter(|(_, found)| !found).count();
            if json {
                #[derive(Serialize)]
                struct Replayed<'a> {
                    id: &'a str,
                    replayed: bool,
                }
                let rows: Vec<Replayed> = ids
                    .iter()
                    .map(|(id, replayed)| Replayed {
                        id,
                        replayed: *replayed,
                    })
                    .collect();
                emit(&rows)?;
            } else {
                for (id, found) in &ids {
                    if *found {
                        println!("replayed {id}");
                    } else {
                        println!("no dead letter {id} in {family}");
                    }
                }
                println!(
                    "{} write(s) back on the queue of {family}",
                    ids.len() - missing
                );
            }
            Ok(if missing > 0 {
                Outcome::CheckFailed
            } else {
                Outcome::Ok
            })
        }
        Command::WriteBehind(WriteBehind::Drain { family, timeout }) => {
            let started = Instant::now();
            let bar = progress(json, &family);
            let status = loop {
                let s = admin.write_behind_status(&family).await?;
                bar.set_message(format!("{} queued", s.length));
                if s.length == 0 || started.elapsed() >= timeout {
                    break s;
                }
                // Polling another process's progress: nothing to await here.
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            bar.finish_and_clear();
            let drained = status.length == 0;
            if json {
                #[derive(Serialize)]
                struct Drained {
                    drained: bool,
                    left: u64,
                    waited_ms: u128,
                }
                emit(&Drained {
                    drained,
                    left: status.length,
                    waited_ms: started.elapsed().as_millis(),
                })?;
            } else if drained {
                println!("{family}: queue empty after {:.1?}", started.elapsed());
            } else {
                println!(
                    "{family}: {} write(s) still queued after {timeout:?} (are the workers running?)",
                    status.length
                );
            }
            Ok(if drained {
                Outcome::Ok
            } else {
                Outcome::CheckFailed
            })
        }
        Command::Bus(Bus::Tail { from, count }) => {
            let mut after = from.unwrap_or_else(|| "$".into());
            let mut seen = 0u64;
            loop {
                let (events, next) = admin.bus_read(&after, Duration::from_secs(1)).await?;
                after = next;
                for e in &events {
                    if json {
                        println!("{}", serde_json::to_string(e)?);
                    } else {
                        print::bus_event(e);
                    }
                    seen += 1;
                    if count.is_some_and(|c| seen >= c) {
                        return Ok(Outcome::Ok);
                    }
                }
            }
        }
    }
}

fn emit<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn split_first<'a>(args: &'a [String], usage: &str) -> anyhow::Result<(&'a str, &'a [String])> {
    match args.split_first() {
        Some((first, rest)) => Ok((first.as_str(), rest)),
        None => bail!("usage: {usage}"),
    }
}

/// A spinner with a count, on stderr and only for people.
fn progress(json: bool, what: &str) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_message(what.to_string());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}: {pos} keys")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// The write-behind families of the config.
fn write_behind_families(conn: &Connection) -> anyhow::Result<Vec<String>> {
    let policies = conn.policies()?;
    let mut out: Vec<String> = policies
        .iter()
        .filter(|p| p.get_strategy() == larder::Strategy::WriteBehind)
        .map(|p| p.name().to_string())
        .collect();
    out.sort();
    Ok(out)
}
