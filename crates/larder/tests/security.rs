//! Redis security: TLS with a verified certificate, and namespaces that keep
//! two applications on one Redis apart. (AUTH with a password and with an
//! ACL user is in `read_path.rs`.)

mod support;

use std::time::Duration;

use larder::Cache;
use larder::key::Any;
use support::item_policy;
use testkit::RedisServer;

async fn get(cache: &Cache, id: u64, loaded: &str) -> String {
    let loaded = loaded.to_string();
    let items = cache.family::<u64, String>("item").unwrap();
    let got = items
        .get_or_load(
            &id,
            move || async move { Ok::<_, std::io::Error>(Some(loaded)) },
        )
        .await
        .unwrap();
    (*got.unwrap()).clone()
}

#[tokio::test]
async fn rediss_works_with_a_trusted_ca_and_refuses_an_unverified_server() {
    let (server, ca) = RedisServer::start_tls();
    let build = |url: String, ca: Option<Vec<u8>>| async move {
        let mut builder = Cache::builder()
            .namespace(testkit::namespace())
            .redis_url(url)
            .redis_timeout(Duration::from_secs(1))
            .l1_max_bytes(0)
            .family(item_policy());
        if let Some(ca) = ca {
            builder = builder.redis_tls_root_cert(ca);
        }
        builder
            .build()
            .await
            .expect("the cache builds even if redis does not answer")
    };

    // Trusting the CA that signed the server's certificate: a real L2.
    let trusted = build(server.tls_url(), Some(ca.clone())).await;
    let items = trusted.family::<u64, String>("item").unwrap();
    items.set(&1, "over tls".into()).await.unwrap();
    assert_eq!(get(&trusted, 1, "from the loader").await, "over tls");
    assert_eq!(items.stats().hits_l2, 1);
    assert_eq!(items.stats().redis_errors, 0);

    // The system's roots do not include that CA: the certificate is
    // verified, so no connection; the cache serves from the loader.
    let untrusted = build(server.tls_url(), None).await;
    assert_eq!(
        get(&untrusted, 1, "from the loader").await,
        "from the loader"
    );
    let stats = untrusted.family::<u64, String>("item").unwrap().stats();
    assert!(stats.redis_errors > 0 && stats.hits_l2 == 0, "{stats:?}");

    // Plain text to a TLS port gets nowhere either.
    let plain = build(server.url(), None).await;
    assert_eq!(get(&plain, 1, "from the loader").await, "from the loader");
    assert!(
        plain
            .family::<u64, String>("item")
            .unwrap()
            .stats()
            .redis_errors
            > 0
    );
}

#[tokio::test]
async fn namespaces_keep_two_applications_on_one_redis_apart() {
    testkit::require_redis().await;
    let policy = || item_policy().tag("group:{id}");
    let build = |ns: String| async move {
        support::on_test_redis(Cache::builder().namespace(ns))
            .l1_max_bytes(0)
            .family(policy())
            .build()
            .await
            .unwrap()
    };
    let suffix = testkit::namespace();
    let a = build(format!("a-{suffix}")).await;
    let b = build(format!("b-{suffix}")).await;
    let (items_a, items_b) = (
        a.family::<u64, String>("item").unwrap(),
        b.family::<u64, String>("item").unwrap(),
    );

    items_a.set(&1, "A's".into()).await.unwrap();
    assert_eq!(get(&b, 1, "B's").await, "B's", "B does not read A's key");
    assert_eq!(get(&a, 1, "?").await, "A's");

    // A's invalidations, of every kind, leave B's entries alone.
    items_a.invalidate(&1).await.unwrap();
    items_a.invalidate_pattern(&Any).await.unwrap();
    a.invalidate_tag("group:{id}", &1u64).await.unwrap();
    assert_eq!(get(&b, 1, "reloaded").await, "B's");
    assert_eq!(items_b.stats().hits_l2, 1);
}
