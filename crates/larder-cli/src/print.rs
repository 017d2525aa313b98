//! Output for people: one fact per line, times relative to now.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use larder::admin::{
    BusEvent, DeadLetterEntry, FamilySample, Inspection, QueueStatus, StoredEntry,
};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `in 42s` / `3m ago`, for a unix time in ms.
fn relative(at_ms: u64) -> String {
    let now = now_ms();
    let human = |ms: u64| humantime::format_duration(Duration::from_secs(ms / 1000)).to_string();
    if at_ms >= now {
        format!("in {}", human(at_ms - now))
    } else {
        format!("{} ago", human(now - at_ms))
    }
}

fn ttl(ms: Option<u64>) -> String {
    ms.map_or("none".into(), |ms| {
        humantime::format_duration(Duration::from_millis(ms)).to_string()
    })
}

fn entry(label: &str, e: &StoredEntry) {
    println!("{label}:");
    let value = serde_json::to_string_pretty(&e.value).unwrap_or_default();
    if e.negative {
        println!("  negative entry (the loader found nothing)");
    } else if let Some(err) = &e.decode_error {
        println!("  value does not decode: {err}");
    } else {
        println!("  value: {}", value.replace('\n', "\n  "));
    }
    match e.fresh_until_ms {
        None => println!("  fresh: forever (ttl never)"),
        Some(f) => println!(
            "  fresh until: {} ({})",
            relative(f),
            if e.fresh { "fresh" } else { "stale" }
        ),
    }
    if let Some(g) = e.grace_until_ms {
        println!("  grace until: {}", relative(g));
    }
    println!("  load time:   {} µs", e.load_us);
    println!("  version:     {}", e.version);
    println!(
        "  size:        {} bytes{}",
        e.bytes,
        if e.compressed { " (lz4)" } else { "" }
    );
    println!("  redis ttl:   {}", ttl(e.ttl_ms));
}

pub fn inspection(i: &Inspection) {
    println!("key: {}", i.key);
    match &i.entry {
        Some(e) => entry("entry", e),
        None => println!("entry: none in Redis"),
    }
    if let Some(p) = &i.pending {
        entry("pending write-behind write (not yet in the database)", p);
    } else if i.persisted_mark {
        println!("pending: none (a persisted mark: the last write is in the database)");
    }
    for t in &i.tags {
        println!(
            "tag {}: stamped {}, now {} ({})",
            t.key,
            t.stamped.map_or("-".into(), |v| v.to_string()),
            t.current,
            if t.is_current { "current" } else { "stale" }
        );
    }
    if let Some(l) = i.lease_ttl_ms {
        println!(
            "lease: a load is in progress (lease expires in {})",
            ttl(Some(l))
        );
    }
}

pub fn stats_header(namespace: &str, with_rates: bool) {
    println!("namespace {namespace}");
    print!(
        "{:<20} {:>10} {:>12} {:>10} {:>10} {:>10}",
        "family", "keys", "bytes", "ttl min", "ttl p50", "ttl max"
    );
    if with_rates {
        print!(" {:>9} {:>10}", "hit rate", "requests");
    }
    println!();
}

pub fn stats_row(s: &FamilySample, hit_rate: Option<f64>, requests: Option<f64>, below: bool) {
    let keys = if s.complete {
        s.keys.to_string()
    } else {
        format!("≥{}", s.keys)
    };
    let secs = |ms: Option<u64>| ms.map_or("-".into(), |ms| format!("{}s", ms / 1000));
    print!(
        "{:<20} {:>10} {:>12} {:>10} {:>10} {:>10}",
        s.family,
        keys,
        s.bytes,
        secs(s.ttl_ms_min),
        secs(s.ttl_ms_p50),
        secs(s.ttl_ms_max)
    );
    if let Some(r) = requests {
        let rate = hit_rate.map_or("-".into(), |h| format!("{:.1}%", h * 100.0));
        print!(
            " {rate:>9} {r:>10.0}{}",
            if below { "  ! under 80%" } else { "" }
        );
    }
    println!();
}

pub fn queue_status(s: &QueueStatus) {
    println!(
        "{}: {} queued, {} in progress, lag {}, {} dead letter(s)",
        s.family,
        s.length,
        s.in_progress,
        ttl(Some(s.lag_ms)),
        s.dead_letters
    );
    for (consumer, n) in &s.consumers {
        println!("  worker {consumer}: {n} unacknowledged");
    }
}

pub fn dead_letter(d: &DeadLetterEntry) {
    println!(
        "{}  {}  version {}  after {} deliveries\n  error: {}\n  value: {}",
        d.id,
        d.key,
        d.version,
        d.deliveries,
        d.error,
        serde_json::to_string(&d.value).unwrap_or_default()
    );
}

pub fn bus_event(e: &BusEvent) {
    println!(
        "{}  {:<7} {}  (from {})",
        e.id, e.kind, e.target, e.publisher
    );
}
