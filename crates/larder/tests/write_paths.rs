//! Write-through and versioned writes against real Redis.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use larder::{Error, Policy, Versioned};
use rand::seq::SliceRandom;
use redis::AsyncCommands;
use support::{Tiers, bounded, cache, cache_in, item_policy, raw};

#[derive(Debug, thiserror::Error)]
#[error("database refused the write")]
struct WriteRefused;

async fn read(family: &larder::Family<u64, String>, key: u64) -> Option<String> {
    family
        .get_or_load(&key, || async { Ok::<_, std::io::Error>(None) })
        .await
        .unwrap()
        .map(|v| (*v).clone())
}

#[tokio::test]
async fn write_through_persists_first_and_caches_only_on_success() {
    let (a, ns) = cache(Tiers::L1Redis, &[item_policy()]).await;
    let items = a.family::<u64, String>("item").unwrap();
    let persisted = Arc::new(AtomicUsize::new(0));

    let p = Arc::clone(&persisted);
    let out = items
        .write_through(&1, async move {
            p.fetch_add(1, Ordering::SeqCst);
            Ok::<_, WriteRefused>(Versioned {
                value: "v1".to_string(),
                version: 1,
            })
        })
        .await
        .unwrap();
    assert_eq!(*out, "v1", "write_through returns what persist stored");
    assert_eq!(persisted.load(Ordering::SeqCst), 1);
    // Cached in L1 and in Redis (another process reads it from there).
    assert_eq!(read(&items, 1).await.as_deref(), Some("v1"));
    assert_eq!(items.stats().hits_l1, 1);
    let b = cache_in(&ns, Tiers::Redis, &[item_policy()]).await;
    let items_b = b.family::<u64, String>("item").unwrap();
    assert_eq!(read(&items_b, 1).await.as_deref(), Some("v1"));

    // The database refuses: the cache keeps what it had.
    let result = items
        .write_through(&1, async { Err::<Versioned<String>, _>(WriteRefused) })
        .await;
    match result {
        Err(Error::Persist(e)) => assert!(e.downcast_ref::<WriteRefused>().is_some()),
        other => panic!("expected Persist, got {other:?}"),
    }
    assert_eq!(read(&items, 1).await.as_deref(), Some("v1"));
    assert_eq!(read(&items_b, 1).await.as_deref(), Some("v1"));
}

#[tokio::test]
async fn a_failed_cache_update_after_the_write_deletes_the_key_and_still_succeeds() {
    let policy = item_policy().max_value_size(64);
    let (cache, _) = cache(Tiers::L1Redis, std::slice::from_ref(&policy)).await;
    let items = cache.family::<u64, String>("item").unwrap();
    items.set(&1, "old".into()).await.unwrap();
    let key = items.key(&1).unwrap();
    assert!(raw().await.exists::<_, bool>(&key).await.unwrap());
    // The new value is too large for the cache, but the database took it.
    let result = items
        .write_through(&1, async {
            Ok::<_, WriteRefused>(Versioned {
                value: "x".repeat(500),
                version: 5,
            })
        })
        .await;
    assert!(result.is_ok(), "the write reached the database: {result:?}");
    assert!(
        !raw().await.exists::<_, bool>(&key).await.unwrap(),
        "never left holding the old value"
    );
    let reloaded = items
        .get_or_load(&1, || async {
            Ok::<_, std::io::Error>(Some("from db".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(reloaded.as_deref().map(String::as_str), Some("from db"));
}

#[tokio::test]
async fn an_older_version_never_replaces_a_newer_one() {
    for tiers in [Tiers::L1, Tiers::L1Redis, Tiers::Redis] {
        let (cache, _) = cache(tiers, &[item_policy()]).await;
        let items = cache.family::<u64, String>("item").unwrap();
        assert!(items.set_versioned(&1, "v5".into(), 5).await.unwrap());
        if tiers != Tiers::L1 {
            assert!(
                !items.set_versioned(&1, "v3".into(), 3).await.unwrap(),
                "{tiers:?}"
            );
            assert_eq!(read(&items, 1).await.as_deref(), Some("v5"), "{tiers:?}");
        }
        assert!(items.set_versioned(&1, "v7".into(), 7).await.unwrap());
        assert_eq!(read(&items, 1).await.as_deref(), Some("v7"), "{tiers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_leave_the_highest_version_every_time() {
    let (writer_a, ns) = cache(Tiers::L1Redis, &[item_policy()]).await;
    let writer_b = cache_in(&ns, Tiers::L1Redis, &[item_policy()]).await;
    let observer = cache_in(&ns, Tiers::Redis, &[item_policy()]).await;
    let families = [
        writer_a.family::<u64, String>("item").unwrap(),
        writer_b.family::<u64, String>("item").unwrap(),
    ];
    let seen = observer.family::<u64, String>("item").unwrap();
    let mut rng = rand::rng();
    for round in 0..40u64 {
        let key = round;
        let mut versions: Vec<u64> = (1..=24).collect();
        versions.shuffle(&mut rng);
        let mut tasks = Vec::new();
        for (i, version) in versions.into_iter().enumerate() {
            let family = families[i % 2].clone();
            tasks.push(tokio::spawn(async move {
                family
                    .write_through(&key, async move {
                        // The database commits in its own order.
                        tokio::task::yield_now().await;
                        Ok::<_, WriteRefused>(Versioned {
                            value: format!("v{version}"),
                            version,
                        })
                    })
                    .await
                    .unwrap();
            }));
        }
        for t in tasks {
            bounded("writer", t).await.unwrap();
        }
        assert_eq!(
            read(&seen, key).await.as_deref(),
            Some("v24"),
            "round {round}: Redis holds the highest"
        );
        for (i, family) in families.iter().enumerate() {
            writer_a
                .sync_invalidations(Duration::from_secs(5))
                .await
                .unwrap();
            writer_b
                .sync_invalidations(Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(
                read(family, key).await.as_deref(),
                Some("v24"),
                "round {round}: writer {i}'s view"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_started_before_a_write_does_not_put_the_old_value_back() {
    for tiers in [Tiers::L1, Tiers::L1Redis] {
        let (cache, _) = cache(
            tiers,
            &[Policy::new("item", "item:{id}").ttl(Duration::from_secs(60))],
        )
        .await;
        let items = cache.family::<u64, String>("item").unwrap();
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let loading = tokio::spawn({
            let items = items.clone();
            async move {
                items
                    .get_or_load(&1, || async move {
                        // Reads the old row, then stalls.
                        let _ = started_tx.send(());
                        let _ = gate.await;
                        Ok::<_, std::io::Error>(Some("old row".to_string()))
                    })
                    .await
            }
        });
        // The loader is running (not merely the caller waiting: before the
        // loader, the load still looks in Redis and takes the lease).
        bounded("loader started", started).await.unwrap();
        // The row changes and the writer updates the cache.
        items.set(&1, "new row".into()).await.unwrap();
        let _ = release.send(());
        let first = bounded("load", loading).await.unwrap().unwrap();
        assert_eq!(
            first.as_deref().map(String::as_str),
            Some("old row"),
            "its caller asked before the write"
        );
        assert_eq!(
            read(&items, 1).await.as_deref(),
            Some("new row"),
            "{tiers:?}: the old row was not cached"
        );
        if tiers != Tiers::L1 {
            let b = cache_in(cache.namespace(), Tiers::Redis, &[item_policy()]).await;
            let in_redis = read(&b.family::<u64, String>("item").unwrap(), 1).await;
            assert_eq!(in_redis.as_deref(), Some("new row"), "{tiers:?}");
        }
    }
}
