//! The ready-made monitoring in `monitoring/` (Prometheus rules, the Grafana
//! dashboard) names only metrics larder exports: a renamed metric fails
//! here, not silently in someone's dashboard. (`promtool check rules` and
//! `promtool test rules` check the rules themselves: ./scripts/test.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `larder_...` metric name in `text`, without the `_bucket`, `_sum`
/// and `_count` suffixes Prometheus adds to histograms.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("larder_") {
        let start = i + at;
        // Not the tail of a longer word (e.g. a recording rule `larder:`).
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |n| start + n);
        if boundary {
            let name = &text[start..end];
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(name.to_string());
        }
        i = end;
    }
    out
}

/// Every metric name the library emits: string literals in its sources.
fn exported() -> String {
    let mut all = String::new();
    let mut dirs = vec![repo().join("crates/larder/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                all.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    all
}

#[test]
fn the_rules_and_the_dashboard_name_only_exported_metrics() {
    let sources = exported();
    for file in [
        "monitoring/larder.rules.yml",
        "monitoring/larder.rules.test.yml",
        "monitoring/grafana-larder.json",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let names = metric_names(&text);
        assert!(names.len() >= 5, "{file} names {names:?}");
        for name in &names {
            assert!(
                sources.contains(&format!("\"{name}\"")),
                "{file} uses {name}, which larder does not export"
            );
        }
    }
}

#[test]
fn the_dashboard_is_importable_json_with_a_datasource_input() {
    let text = std::fs::read_to_string(repo().join("monitoring/grafana-larder.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dash["__inputs"][0]["pluginId"], "prometheus");
    let panels = dash["panels"].as_array().unwrap();
    let queries: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(queries.len() >= 15, "{} queries", queries.len());
    // The per-family hit rate, with the article's 80 % line.
    assert!(
        queries
            .iter()
            .any(|q| q.contains("larder:hit_ratio:rate5m"))
    );
    assert!(text.contains("\"value\": 0.8"));
}

#[test]
fn metric_names_are_found_whole() {
    let names = metric_names(
        "rate(larder_loader_duration_seconds_bucket[5m]) larder:hit_ratio x_larder_no",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["larder_loader_duration_seconds".to_string()]
    );
}
