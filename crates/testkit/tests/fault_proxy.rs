//! The fault proxy itself, against a real PostgreSQL and Redis.

use std::time::{Duration, Instant};

use testkit::{Fault, FaultProxy};

async fn redis_through(proxy: &FaultProxy) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{}", proxy.addr()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connects through the proxy")
}

async fn ping(
    conn: &mut redis::aio::MultiplexedConnection,
    within: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    match tokio::time::timeout(within, redis::cmd("PING").query_async::<String>(conn)).await {
        Ok(Ok(_)) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

#[tokio::test]
async fn latency_blackhole_and_reset_do_what_they_say() {
    testkit::require_redis().await;
    let upstream = tokio::net::lookup_host(testkit::redis_url().trim_start_matches("redis://"))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = FaultProxy::start(upstream).await;
    let mut conn = redis_through(&proxy).await;
    assert!(ping(&mut conn, Duration::from_secs(1)).await.is_ok());

    proxy.set(Fault::Latency(Duration::from_millis(150)));
    let took = ping(&mut conn, Duration::from_secs(2)).await.unwrap();
    assert!(took >= Duration::from_millis(150), "{took:?}");

    proxy.set(Fault::Blackhole);
    assert_eq!(
        ping(&mut conn, Duration::from_millis(300)).await,
        Err("timed out".into())
    );
    proxy.set(Fault::None);
    // Held, not lost: the connection works again.
    let mut fresh = redis_through(&proxy).await;
    assert!(ping(&mut fresh, Duration::from_secs(1)).await.is_ok());

    proxy.reset_connections();
    let after_reset = ping(&mut fresh, Duration::from_secs(1)).await;
    assert!(
        after_reset.is_err(),
        "a reset connection fails: {after_reset:?}"
    );

    proxy.set(Fault::Refuse);
    let refused = redis::Client::open(format!("redis://{}", proxy.addr()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await;
    assert!(refused.is_err(), "new connections are refused");
}

#[tokio::test]
async fn a_postgres_pool_recovers_after_a_blackhole() {
    let db = testkit::TestDatabase::create().await;
    let (scheme_user, rest) = db.url().rsplit_once('@').unwrap();
    let (host_port, name) = rest.split_once('/').unwrap();
    let upstream = tokio::net::lookup_host(host_port)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = FaultProxy::start(upstream).await;
    let url = format!("{scheme_user}@{}/{name}", proxy.addr());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect(&url)
        .await
        .unwrap();
    let one = |pool: sqlx::PgPool| async move {
        tokio::time::timeout(
            Duration::from_millis(700),
            sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&pool),
        )
        .await
    };
    assert!(matches!(one(pool.clone()).await, Ok(Ok(1))));
    proxy.set(Fault::Blackhole);
    assert!(!matches!(one(pool.clone()).await, Ok(Ok(1))));
    proxy.set(Fault::None);
    let started = Instant::now();
    loop {
        if matches!(one(pool.clone()).await, Ok(Ok(1))) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the pool never recovered"
        );
    }
    println!("recovered in {:?}", started.elapsed());
}
