//! Single-flight: one load per key per process, whatever the crowd does.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use larder::{Error, Family};
use support::{ALL_TIERS, Tiers, bounded, cache, item_policy};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
#[error("database unavailable")]
struct DbDown;

/// A loader gate: loaders block until the test opens it.
#[derive(Clone)]
struct Gate {
    open: watch::Sender<bool>,
}

impl Gate {
    fn new() -> Self {
        Gate {
            open: watch::channel(false).0,
        }
    }

    async fn wait(&self) {
        let mut rx = self.open.subscribe();
        // Only fails if the sender is dropped, which the test holds.
        let _ = rx.wait_for(|open| *open).await;
    }

    fn open(&self) {
        self.open.send_replace(true);
    }
}

/// Waits (bounded) until `n` callers are parked on the load of `key`.
async fn until_waiting(family: &Family<u64, String>, key: u64, n: usize) {
    bounded("callers gathering on the load", async {
        while family.waiting(&key) < n {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_callers_on_a_cold_key_cause_one_load() {
    for tiers in ALL_TIERS {
        let (cache, _) = cache(tiers, &[item_policy()]).await;
        let items = cache.family::<u64, String>("item").unwrap();
        let gate = Gate::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let (items, gate, calls) = (items.clone(), gate.clone(), Arc::clone(&calls));
            tasks.push(tokio::spawn(async move {
                items
                    .get_or_load(&1, move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        gate.wait().await;
                        Ok::<_, DbDown>(Some("v1".to_string()))
                    })
                    .await
            }));
        }
        until_waiting(&items, 1, 1000).await;
        gate.open();
        for t in tasks {
            let got = bounded("caller", t).await.unwrap().unwrap();
            assert_eq!(got.as_deref().map(String::as_str), Some("v1"), "{tiers:?}");
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "{tiers:?}: exactly one loader call"
        );
        let s = items.stats();
        assert_eq!((s.loader_calls, s.misses), (1, 1000), "{tiers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_load_fails_every_waiter_and_the_next_call_retries() {
    for tiers in ALL_TIERS {
        let (cache, _) = cache(tiers, &[item_policy()]).await;
        let items = cache.family::<u64, String>("item").unwrap();
        let gate = Gate::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let (items, gate, calls) = (items.clone(), gate.clone(), Arc::clone(&calls));
            tasks.push(tokio::spawn(async move {
                items
                    .get_or_load(&1, move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        gate.wait().await;
                        Err::<Option<String>, _>(DbDown)
                    })
                    .await
            }));
        }
        until_waiting(&items, 1, 1000).await;
        gate.open();
        for t in tasks {
            match bounded("caller", t).await.unwrap() {
                Err(Error::Loader(e)) => assert!(
                    e.downcast_ref::<DbDown>().is_some(),
                    "{tiers:?}: the loader's own error"
                ),
                other => panic!("{tiers:?}: expected the loader error, got {other:?}"),
            }
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{tiers:?}");
        // The error was not cached.
        let got = items
            .get_or_load(&1, || async { Ok::<_, DbDown>(Some("v2".to_string())) })
            .await
            .unwrap();
        assert_eq!(got.as_deref().map(String::as_str), Some("v2"), "{tiers:?}");
        assert_eq!(items.stats().loader_errors, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_first_caller_does_not_cancel_the_load() {
    let (cache, _) = cache(Tiers::L1Redis, &[item_policy()]).await;
    let items = cache.family::<u64, String>("item").unwrap();
    let gate = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let loader = |gate: Gate, calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            gate.wait().await;
            Ok::<_, DbDown>(Some("v".to_string()))
        }
    };
    let first = tokio::spawn({
        let (items, l) = (items.clone(), loader(gate.clone(), Arc::clone(&calls)));
        async move { items.get_or_load(&9, l).await }
    });
    until_waiting(&items, 9, 1).await;
    let second = tokio::spawn({
        let (items, l) = (items.clone(), loader(gate.clone(), Arc::clone(&calls)));
        async move { items.get_or_load(&9, l).await }
    });
    until_waiting(&items, 9, 2).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    gate.open();
    let got = bounded("second caller", second).await.unwrap().unwrap();
    assert_eq!(got.as_deref().map(String::as_str), Some("v"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_loader_is_contained_and_the_key_recovers() {
    let (cache, _) = cache(Tiers::L1, &[item_policy()]).await;
    let items = cache.family::<u64, String>("item").unwrap();
    let result = items
        .get_or_load(&1, || async {
            if true {
                panic!("loader bug");
            }
            Ok::<Option<String>, DbDown>(None)
        })
        .await;
    assert!(matches!(result, Err(Error::LoaderPanicked)), "{result:?}");
    let got = items
        .get_or_load(&1, || async { Ok::<_, DbDown>(Some("ok".to_string())) })
        .await
        .unwrap();
    assert_eq!(got.as_deref().map(String::as_str), Some("ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_keys_many_callers_many_rounds_one_load_per_key_per_round() {
    for tiers in [Tiers::L1, Tiers::L1Redis] {
        let (cache, _) = cache(tiers, &[item_policy()]).await;
        let items = cache.family::<u64, String>("item").unwrap();
        for round in 0..20u64 {
            let calls: Arc<Vec<AtomicUsize>> =
                Arc::new((0..32).map(|_| AtomicUsize::new(0)).collect());
            let mut tasks = Vec::new();
            for caller in 0..256u64 {
                let (items, calls) = (items.clone(), Arc::clone(&calls));
                tasks.push(tokio::spawn(async move {
                    let key = (caller * 7 + round) % 32;
                    let got = items
                        .get_or_load(&key, move || async move {
                            calls[key as usize].fetch_add(1, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            Ok::<_, DbDown>(Some(format!("{round}:{key}")))
                        })
                        .await
                        .unwrap();
                    assert_eq!(got.as_deref(), Some(&format!("{round}:{key}")));
                }));
            }
            for t in tasks {
                bounded("caller", t).await.unwrap();
            }
            for (key, c) in calls.iter().enumerate() {
                assert_eq!(
                    c.load(Ordering::SeqCst),
                    1,
                    "{tiers:?} round {round} key {key}"
                );
            }
            for key in 0..32 {
                items.invalidate(&key).await.unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_waits_for_keys_already_loading_instead_of_loading_them_again() {
    let (cache, _) = cache(Tiers::L1Redis, &[item_policy()]).await;
    let items = cache.family::<u64, String>("item").unwrap();
    let gate = Gate::new();
    let single = tokio::spawn({
        let (items, gate) = (items.clone(), gate.clone());
        async move {
            items
                .get_or_load(&1, move || async move {
                    gate.wait().await;
                    Ok::<_, DbDown>(Some("from get_or_load".to_string()))
                })
                .await
        }
    });
    until_waiting(&items, 1, 1).await;
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let batch = tokio::spawn({
        let (items, asked) = (items.clone(), Arc::clone(&asked));
        async move {
            items
                .get_many(&[1, 2], move |missing: Vec<u64>| async move {
                    asked.lock().unwrap().extend(missing.iter().copied());
                    Ok::<_, DbDown>(
                        missing
                            .into_iter()
                            .map(|k| (k, format!("batch {k}")))
                            .collect::<HashMap<_, _>>(),
                    )
                })
                .await
        }
    });
    until_waiting(&items, 1, 2).await;
    gate.open();
    let got = bounded("batch", batch).await.unwrap().unwrap();
    assert_eq!(
        got[0].as_deref().map(String::as_str),
        Some("from get_or_load")
    );
    assert_eq!(got[1].as_deref().map(String::as_str), Some("batch 2"));
    assert_eq!(
        *asked.lock().unwrap(),
        vec![2],
        "key 1 was not loaded twice"
    );
    bounded("single", single).await.unwrap().unwrap();
}
