//! Render once: a family's JSON body kept beside the value in L1, served
//! again on every hit, replaced whenever the value is (invalidation,
//! write-through, write-behind, refresh; in this process and, through the
//! bus, in another). Against real Redis (one server, or the cluster).

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use larder::{Cache, Policy, Strategy, Versioned};
use serde::{Deserialize, Serialize};
use support::{Tiers, cache_in};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Portfolio {
    user_id: u64,
    holdings: BTreeMap<String, u64>,
    note: String,
}

fn portfolio(user_id: u64, qty: u64) -> Portfolio {
    Portfolio {
        user_id,
        holdings: BTreeMap::from([("TCS".into(), qty), ("INFY".into(), qty * 2)]),
        note: format!("escaped \"quotes\" and unicode é for {user_id}"),
    }
}

fn policy() -> Policy {
    Policy::new("portfolio", "portfolio:{user_id}")
        .ttl(Duration::from_secs(60))
        .render_json()
}

fn behind() -> Policy {
    Policy::new("watchlist", "watchlist:{user_id}")
        .ttl(Duration::from_secs(60))
        .strategy(Strategy::WriteBehind)
        .render_json()
}

async fn rendered(
    family: &larder::Family<u64, Portfolio>,
    id: u64,
    db: &Arc<AtomicU64>,
) -> larder::Rendered<Portfolio> {
    let db = Arc::clone(db);
    family
        .get_or_load_rendered(&id, move || async move {
            Ok::<_, std::io::Error>(Some(portfolio(id, db.load(Ordering::SeqCst))))
        })
        .await
        .expect("read")
        .expect("found")
}

#[tokio::test]
async fn the_body_is_serde_json_of_the_value_and_rendered_once_per_fill() {
    for tiers in support::ALL_TIERS {
        let ns = testkit::namespace();
        let cache = cache_in(&ns, tiers, &[policy()]).await;
        let family = cache.family::<u64, Portfolio>("portfolio").unwrap();
        let db = Arc::new(AtomicU64::new(3));
        let first = rendered(&family, 1, &db).await;
        assert_eq!(
            &first.body()[..],
            serde_json::to_vec(first.value()).unwrap(),
            "{tiers:?}"
        );
        assert_eq!(**first.value(), portfolio(1, 3));
        let again = rendered(&family, 1, &db).await;
        assert_eq!(again.body(), first.body());
        assert_eq!(
            again.etag(),
            first.etag(),
            "{tiers:?}: same data, same ETag"
        );
        if tiers != Tiers::Redis {
            // Served from L1: the very bytes rendered at the fill.
            assert_eq!(again.body().as_ptr(), first.body().as_ptr(), "{tiers:?}");
            assert!(again.fresh_for() > Duration::from_secs(50), "{tiers:?}");
        }
        // Another process renders the same data to the same ETag.
        let other = cache_in(&ns, tiers, &[policy()]).await;
        let theirs = rendered(&other.family("portfolio").unwrap(), 1, &db).await;
        assert_eq!(
            theirs.etag(),
            first.etag(),
            "{tiers:?}: stable across processes"
        );
    }
}

#[tokio::test]
async fn every_kind_of_write_replaces_the_body_here_and_in_another_process() {
    let ns = testkit::namespace();
    let (a, b) = (
        cache_in(&ns, Tiers::L1Redis, &[policy(), behind()]).await,
        cache_in(&ns, Tiers::L1Redis, &[policy(), behind()]).await,
    );
    let (pa, pb) = (
        a.family::<u64, Portfolio>("portfolio").unwrap(),
        b.family::<u64, Portfolio>("portfolio").unwrap(),
    );
    let db = Arc::new(AtomicU64::new(1));
    let check = |expected: u64| {
        let (pa, pb, db, a, b) = (
            pa.clone(),
            pb.clone(),
            Arc::clone(&db),
            a.clone(),
            b.clone(),
        );
        async move {
            for (cache, family) in [(&a, &pa), (&b, &pb)] {
                assert!(
                    cache
                        .sync_invalidations(Duration::from_secs(5))
                        .await
                        .unwrap()
                );
                let r = rendered(family, 7, &db).await;
                assert_eq!(**r.value(), portfolio(7, expected));
                assert_eq!(
                    &r.body()[..],
                    serde_json::to_vec(&portfolio(7, expected)).unwrap()
                );
            }
        }
    };
    check(1).await;
    let before = rendered(&pb, 7, &db).await.etag().to_string();

    // Delete on write.
    db.store(2, Ordering::SeqCst);
    pa.invalidate(&7).await.unwrap();
    check(2).await;
    let after = rendered(&pb, 7, &db).await.etag().to_string();
    assert_ne!(before, after, "the ETag follows the data");

    // Write-through.
    pa.write_through(&7, async {
        Ok::<_, std::io::Error>(Versioned {
            value: portfolio(7, 3),
            version: 10,
        })
    })
    .await
    .unwrap();
    db.store(3, Ordering::SeqCst);
    check(3).await;

    // A plain set.
    pa.set(&7, portfolio(7, 4)).await.unwrap();
    db.store(4, Ordering::SeqCst);
    check(4).await;

    // Write-behind: the body of the pending write, at once, in both.
    let (wa, wb) = (
        a.family::<u64, Portfolio>("watchlist").unwrap(),
        b.family::<u64, Portfolio>("watchlist").unwrap(),
    );
    wa.write_behind(&7, portfolio(7, 5)).await.unwrap();
    for (cache, family) in [(&a, &wa), (&b, &wb)] {
        assert!(
            cache
                .sync_invalidations(Duration::from_secs(5))
                .await
                .unwrap()
        );
        let r = family
            .get_or_load_rendered(&7, || async { Ok::<_, std::io::Error>(None) })
            .await
            .unwrap()
            .expect("the pending write");
        assert_eq!(&r.body()[..], serde_json::to_vec(&portfolio(7, 5)).unwrap());
    }
}

#[tokio::test]
async fn a_refresh_replaces_the_body() {
    let ttl = Duration::from_millis(300);
    let cache = Cache::builder()
        .family(
            Policy::new("portfolio", "portfolio:{user_id}")
                .ttl(ttl)
                .grace(Duration::from_secs(60))
                .early_refresh(0.0)
                .render_json(),
        )
        .build()
        .await
        .unwrap();
    let family = cache.family::<u64, Portfolio>("portfolio").unwrap();
    let db = Arc::new(AtomicU64::new(1));
    assert_eq!(rendered(&family, 1, &db).await.value().holdings["TCS"], 1);
    db.store(2, Ordering::SeqCst);
    // The entry's freshness is wall-clock time: let it pass.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    // Stale within grace: served at once, refreshed behind.
    let stale = rendered(&family, 1, &db).await;
    assert_eq!(stale.value().holdings["TCS"], 1);
    assert_eq!(
        stale.fresh_for(),
        Duration::ZERO,
        "a stale entry says max-age 0"
    );
    let refreshed = async {
        loop {
            let r = rendered(&family, 1, &db).await;
            if r.value().holdings["TCS"] == 2 {
                return r;
            }
            tokio::task::yield_now().await;
        }
    };
    let fresh = tokio::time::timeout(Duration::from_secs(5), refreshed)
        .await
        .expect("the refresh lands");
    assert_eq!(
        &fresh.body()[..],
        serde_json::to_vec(&portfolio(1, 2)).unwrap()
    );
    assert!(fresh.fresh_for() > Duration::ZERO);
}

#[tokio::test]
async fn rendered_bodies_count_against_the_l1_byte_budget() {
    let budget: u64 = 64 * 1024;
    let fill = |render: bool| async move {
        let mut p = Policy::new("portfolio", "portfolio:{user_id}").ttl(Duration::from_secs(60));
        if render {
            p = p.render_json();
        }
        let cache = Cache::builder()
            .l1_max_bytes(budget)
            .family(p)
            .build()
            .await
            .unwrap();
        let family = cache.family::<u64, Portfolio>("portfolio").unwrap();
        let db = Arc::new(AtomicU64::new(1));
        let mut bodies = 0u64;
        for id in 0..3_000 {
            bodies += rendered(&family, id, &db).await.body().len() as u64;
        }
        (cache.l1_usage().await, bodies)
    };
    let (plain, _) = fill(false).await;
    let (with_bodies, bodies) = fill(true).await;
    assert!(
        bodies > 2 * budget,
        "the test overfills: {bodies} bytes of bodies"
    );
    for usage in [plain, with_bodies] {
        assert!(
            usage.bytes <= budget,
            "L1 holds {} of {budget} bytes",
            usage.bytes
        );
    }
    // The same values, the same budget: with their bodies counted, markedly
    // fewer fit.
    assert!(
        with_bodies.entries * 10 < plain.entries * 8,
        "{} entries with bodies vs {} without",
        with_bodies.entries,
        plain.entries
    );
}

#[tokio::test]
async fn a_family_that_does_not_render_still_answers_with_a_body() {
    let cache = Cache::builder()
        .family(Policy::new("plain", "plain:{id}").ttl(Duration::from_secs(60)))
        .build()
        .await
        .unwrap();
    let plain = cache.family::<u64, Portfolio>("plain").unwrap();
    let r = plain
        .get_or_load_rendered(&1, || async {
            Ok::<_, std::io::Error>(Some(portfolio(1, 1)))
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&r.body()[..], serde_json::to_vec(&portfolio(1, 1)).unwrap());
    assert_eq!(
        r.fresh_for(),
        Duration::ZERO,
        "rendered for this call: no max-age"
    );
    let none = plain
        .get_or_load_rendered(&2, || async { Ok::<_, std::io::Error>(None) })
        .await
        .unwrap();
    assert!(none.is_none());
}
