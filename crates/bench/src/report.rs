//! The article's before/after table, as text, JSON and an SVG picture.

use anyhow::Context as _;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::load::LoadResult;
use crate::scrape::Counters;

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// `before (no cache)`, `after (larder)`, or the target's name.
    pub label: String,
    /// Successful responses.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Length of the measured window.
    pub seconds: f64,
    /// Successful responses per second.
    pub requests_per_s: f64,
    /// Latency in milliseconds.
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Database queries per second, as counted by the service.
    pub db_queries_per_s: Option<f64>,
    /// Database queries per request.
    pub db_queries_per_request: Option<f64>,
    /// Cache hit rate (0..1), as counted by the service.
    pub hit_rate: Option<f64>,
}

impl Run {
    /// Combines what the load generator and the service counted.
    pub fn new(label: &str, load: &LoadResult, counted: Option<Counters>) -> Run {
        let h = &load.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        let seconds = load.elapsed.as_secs_f64();
        let requests = load.ok;
        Run {
            label: label.to_string(),
            requests,
            errors: load.errors,
            seconds,
            requests_per_s: requests as f64 / seconds,
            avg_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            db_queries_per_s: counted.map(|c| c.db_queries / seconds),
            db_queries_per_request: counted
                .filter(|_| requests > 0)
                .map(|c| c.db_queries / requests as f64),
            hit_rate: counted.and_then(|c| c.hit_rate()),
        }
    }
}

/// A scenario's result: its settings, the machine, and the runs side by side.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub settings: serde_json::Value,
    pub machine: String,
    pub runs: Vec<Run>,
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "n/a".into())
}

impl Report {
    /// The side-by-side table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(&str, Vec<String>)> = vec![
            (
                "Avg response time",
                self.runs
                    .iter()
                    .map(|r| format!("{:.2} ms", r.avg_ms))
                    .collect(),
            ),
            (
                "P50 latency",
                self.runs
                    .iter()
                    .map(|r| format!("{:.2} ms", r.p50_ms))
                    .collect(),
            ),
            (
                "P99 latency",
                self.runs
                    .iter()
                    .map(|r| format!("{:.2} ms", r.p99_ms))
                    .collect(),
            ),
            (
                "Max latency",
                self.runs
                    .iter()
                    .map(|r| format!("{:.2} ms", r.max_ms))
                    .collect(),
            ),
            (
                "Requests/sec",
                self.runs
                    .iter()
                    .map(|r| format!("{:.0}", r.requests_per_s))
                    .collect(),
            ),
            (
                "DB queries/sec",
                self.runs
                    .iter()
                    .map(|r| opt(r.db_queries_per_s, |v| format!("{v:.0}")))
                    .collect(),
            ),
            (
                "DB queries/request",
                self.runs
                    .iter()
                    .map(|r| opt(r.db_queries_per_request, |v| format!("{v:.3}")))
                    .collect(),
            ),
            (
                "Cache hit rate",
                self.runs
                    .iter()
                    .map(|r| opt(r.hit_rate, |v| format!("{:.1}%", v * 100.0)))
                    .collect(),
            ),
            (
                "Errors",
                self.runs.iter().map(|r| r.errors.to_string()).collect(),
            ),
        ];
        if self.runs.len() == 2 {
            let (b, a) = (&self.runs[0], &self.runs[1]);
            let ratio = |x: f64, y: f64| {
                if y > 0.0 {
                    format!("{:.1}x", x / y)
                } else {
                    "-".into()
                }
            };
            rows.push((
                "P99 before/after",
                vec![String::new(), ratio(b.p99_ms, a.p99_ms)],
            ));
            if let (Some(qb), Some(qa)) = (b.db_queries_per_s, a.db_queries_per_s) {
                let cut = if qb > 0.0 {
                    (1.0 - qa / qb) * 100.0
                } else {
                    0.0
                };
                rows.push(("DB queries cut", vec![String::new(), format!("{cut:.1}%")]));
            }
        }
        let width = 22;
        let col = self
            .runs
            .iter()
            .map(|r| r.label.len())
            .max()
            .unwrap_or(10)
            .max(14)
            + 2;
        let mut out = String::new();
        let _ = write!(out, "{:width$}", "");
        for r in &self.runs {
            let _ = write!(out, "{:>col$}", r.label);
        }
        out.push('\n');
        let _ = writeln!(out, "{}", "-".repeat(width + col * self.runs.len()));
        for (name, cells) in rows {
            let _ = write!(out, "{name:width$}");
            for c in cells {
                let _ = write!(out, "{c:>col$}");
            }
            out.push('\n');
        }
        out
    }

    /// Writes the JSON form.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(self)?)?;
        Ok(())
    }

    /// Writes a bar chart: one panel per measure, one bar per run.
    pub fn write_svg(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let panels: Vec<(&str, Vec<Option<f64>>, &str)> = vec![
            (
                "Avg latency",
                self.runs.iter().map(|r| Some(r.avg_ms)).collect(),
                "ms",
            ),
            (
                "P99 latency",
                self.runs.iter().map(|r| Some(r.p99_ms)).collect(),
                "ms",
            ),
            (
                "DB queries/s",
                self.runs.iter().map(|r| r.db_queries_per_s).collect(),
                "/s",
            ),
            (
                "Hit rate",
                self.runs
                    .iter()
                    .map(|r| r.hit_rate.map(|h| h * 100.0))
                    .collect(),
                "%",
            ),
        ];
        let colors = ["#ef4444", "#22c55e", "#3b82f6", "#a855f7"];
        let (pw, ph, bar_h, gap) = (460.0, 40.0 + 34.0 * self.runs.len() as f64, 24.0, 10.0);
        let height = 60.0 + ph * panels.len() as f64;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="13">"#,
            w = pw + 40.0
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="20" y="28" font-size="16" font-weight="bold">{}</text>"#,
            escape(&self.scenario)
        );
        for (p, (title, values, unit)) in panels.iter().enumerate() {
            let top = 50.0 + p as f64 * ph;
            let _ = writeln!(
                svg,
                r#"<text x="20" y="{}" font-weight="bold">{title}</text>"#,
                top + 16.0
            );
            let max = values
                .iter()
                .flatten()
                .cloned()
                .fold(0.0, f64::max)
                .max(1e-9);
            for (i, v) in values.iter().enumerate() {
                let y = top + 26.0 + i as f64 * (bar_h + gap);
                let label = &self.runs[i].label;
                let _ = writeln!(
                    svg,
                    r#"<text x="20" y="{}">{}</text>"#,
                    y + 17.0,
                    escape(label)
                );
                match v {
                    Some(v) => {
                        let w = (v / max) * (pw - 220.0);
                        let _ = writeln!(
                            svg,
                            r#"<rect x="170" y="{y}" width="{w:.1}" height="{bar_h}" fill="{}"/><text x="{}" y="{}">{v:.2} {unit}</text>"#,
                            colors[i % colors.len()],
                            175.0 + w,
                            y + 17.0
                        );
                    }
                    None => {
                        let _ = writeln!(svg, r#"<text x="175" y="{}">n/a</text>"#, y + 17.0);
                    }
                }
            }
        }
        svg.push_str("</svg>\n");
        std::fs::write(path, svg)?;
        Ok(())
    }
}

/// A one-panel horizontal bar chart of `bars` (label, value), as SVG.
pub fn bars_svg(
    path: &Path,
    title: &str,
    bars: &[(String, f64)],
    unit: &str,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let (label_w, bar_w, bar_h, gap) = (330.0, 300.0, 24.0, 10.0);
    let height = 60.0 + bars.len() as f64 * (bar_h + gap);
    let max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-9);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="13">"#,
        w = label_w + bar_w + 120.0
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="20" y="28" font-size="16" font-weight="bold">{}</text>"#,
        escape(title)
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = 45.0 + i as f64 * (bar_h + gap);
        let w = v / max * bar_w;
        let _ = writeln!(
            svg,
            r#"<text x="20" y="{ty}">{label}</text><rect x="{label_w}" y="{y}" width="{w:.1}" height="{bar_h}" fill="{color}"/><text x="{tx}" y="{ty}">{v:.0} {unit}</text>"#,
            ty = y + 17.0,
            label = escape(label),
            color = if i == 0 { "#9ca3af" } else { "#22c55e" },
            tx = label_w + w + 5.0,
        );
    }
    svg.push_str("</svg>\n");
    std::fs::write(path, svg)?;
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// CPU model, core count and memory, for the record.
/// Writes a scenario's figures as pretty JSON to `path` (creating its
/// folder) and says where.
pub fn save_figures(path: &Path, figures: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(figures)?)
        .with_context(|| format!("writing the figures to {}", path.display()))?;
    println!("\nfigures: {}", path.display());
    Ok(())
}

/// CPU time (user + system) a process has used, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .context("short /proc/<pid>/stat")?
            .parse::<u64>()?)
    };
    // USER_HZ is 100 on every Linux /proc exposes to user space.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB")
}
