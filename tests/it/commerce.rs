//! The commerce pipeline against real PostgreSQL, Redis and a Kafka broker (librdkafka's mock
//! cluster: the runtime's embedded one, or one held by the test while actord runs as a
//! process). Every test uses a schema, key prefix and broker of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use actord::config::{self, Sources};
use actord::pipelines::commerce::propensity::{CachedProduct, CachedUser};
use actord::pipelines::commerce::{cache, grades, history, store, CommerceConfig};
use actord::sources::kafka::embedded::EmbeddedKafka;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

use crate::kafka::read_until;
use crate::recorder::{drop_schema, produce};
use crate::support::{get, pg, tree, unique, until, InProcess, Process};

pub(crate) fn fresh_schema() -> String {
    unique("shop").replace('-', "_")
}

/// A commerce-only configuration on database `postgres`, in `schema`, with Redis keys under
/// a prefix of the schema's name.
pub(crate) fn shop_config(schema: &str, extra: &str) -> String {
    format!(
        r#"[runtime]
enable = ["commerce"]
cool_down = "1s"
shutdown_timeout = "10s"
[supervision]
backoff_initial = "100ms"
backoff_max = "2s"
max_restarts = 20
[pipelines.commerce]
key_prefix = "{schema}:"
batch_timeout = "100ms"
monitor_interval = "500ms"
cache_refresh_interval = "2s"
{extra}
[pipelines.commerce.db]
database = "postgres"
schema = "{schema}"
"#
    )
}

/// The validated section of `toml`.
fn commerce_config(toml: &str) -> CommerceConfig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("supervision.toml");
    std::fs::write(&path, toml).unwrap();
    let config = config::load(&Sources {
        config_path: Some(path),
        ..Sources::default()
    })
    .expect("valid test config");
    config.pipelines.get::<CommerceConfig>().clone()
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open("redis://127.0.0.1:6379/0")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis on 127.0.0.1:6379 (scripts/services.sh starts it)")
}

pub(crate) async fn drop_keys(prefix: &str) {
    let mut conn = redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    for k in keys {
        let _: () = redis::cmd("DEL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

pub(crate) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 30, 12, 0, 0).unwrap()
}

pub(crate) fn user(id: &str, at: DateTime<Utc>) -> String {
    json!({"user_id": id, "name": "홍길동", "gender": "F", "age": 33, "address": "서울 1구",
           "grade": "BRONZE", "created_at": at.to_rfc3339()})
    .to_string()
}

pub(crate) fn product(id: &str, price: i64, at: DateTime<Utc>) -> String {
    json!({"product_id": id, "name": format!("item {id}"), "category": "food", "price": price,
           "created_at": at.to_rfc3339()})
    .to_string()
}

pub(crate) fn order(
    id: &str,
    user: &str,
    product: &str,
    qty: i64,
    price: i64,
    at: DateTime<Utc>,
) -> String {
    json!({"order_id": id, "user_id": user, "product_id": product, "quantity": qty,
           "unit_price": price, "total_amount": qty * price, "scenario": "popular_single",
           "created_at": at.to_rfc3339()})
    .to_string()
}

pub(crate) async fn scalar(sql: &str) -> i64 {
    pg().await
        .query_one(sql, &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

/// Orders, the sum of order_count, and users whose last_ordered_at is not their latest order.
pub(crate) async fn counters(schema: &str) -> (i64, i64, i64) {
    let s = format!("\"{schema}\"");
    (
        scalar(&format!("SELECT count(*) FROM {s}.orders")).await,
        scalar(&format!(
            "SELECT coalesce(sum(order_count), 0)::bigint FROM {s}.products"
        ))
        .await,
        scalar(&format!(
            "SELECT count(*) FROM {s}.users u WHERE u.last_ordered_at IS DISTINCT FROM \
             (SELECT max(created_at) FROM {s}.orders o WHERE o.user_id = u.user_id)"
        ))
        .await,
    )
}

/// Reads `orders-dlq` until it holds `n` letters (at most `rounds` × 30 s), off the runtime's
/// thread: the pipeline under test runs on it.
async fn read_dlq(bootstrap: &str, n: usize, rounds: u32) -> Vec<(Value, Vec<(String, String)>)> {
    let mut read = Vec::new();
    for _ in 0..rounds {
        let bootstrap = bootstrap.to_owned();
        read = tokio::task::spawn_blocking(move || {
            read_until(&bootstrap, "orders-dlq", |r| r.len() >= n)
        })
        .await
        .unwrap();
        if read.len() >= n {
            break;
        }
    }
    read
}

/// Starts commerce in-process on its own embedded broker; returns it and the bootstrap.
async fn start(schema: &str, extra: &str) -> (InProcess, String) {
    let p = InProcess::start(&shop_config(schema, extra)).await;
    let info: Value = serde_json::from_str(&get(&p.base, "/api/info").await.1).unwrap();
    let bootstrap = info["kafka"]["bootstrap"].as_str().unwrap().to_owned();
    (p, bootstrap)
}

/// Three users, two products, and `n` orders spread over them.
async fn shop_with_orders(bootstrap: &str, n: i64) -> Vec<String> {
    let at = t0();
    produce(
        bootstrap,
        "users",
        (0..3).map(|i| user(&format!("U{i}"), at)).collect(),
    )
    .await;
    produce(
        bootstrap,
        "products",
        vec![product("P0", 1_000, at), product("P1", 25_000, at)],
    )
    .await;
    let orders: Vec<String> = (0..n)
        .map(|i| {
            order(
                &format!("O{i}"),
                &format!("U{}", i % 3),
                &format!("P{}", i % 2),
                1 + i % 3,
                if i % 2 == 0 { 1_000 } else { 25_000 },
                at + chrono::Duration::minutes(i),
            )
        })
        .collect();
    produce(bootstrap, "orders", orders.clone()).await;
    orders
}

#[tokio::test]
async fn orders_flow_end_to_end_and_the_tree_and_metrics_show_the_pipeline() {
    let schema = fresh_schema();
    let (p, bootstrap) = start(&schema, "").await;
    shop_with_orders(&bootstrap, 30).await;
    until(Duration::from_secs(60), "30 orders written", || async {
        counters(&schema).await.0 == 30
    })
    .await;
    let (orders, order_count, stale) = counters(&schema).await;
    assert_eq!((orders, order_count, stale), (30, 30, 0));
    // P0 took the even orders, P1 the odd ones.
    assert_eq!(
        scalar(&format!(
            "SELECT order_count FROM \"{schema}\".products WHERE product_id = 'P0'"
        ))
        .await,
        15
    );
    // A malformed order goes to the DLQ at once; the path goes on.
    produce(&bootstrap, "orders", vec!["{not json".to_owned()]).await;
    let dlq = read_dlq(&bootstrap, 1, 4).await;
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let metrics = get(&p.base, "/metrics").await.1;
    for series in [
        "actord_commerce_cache_entries",
        "actord_commerce_redis_memory_bytes",
        "actord_commerce_redis_hit_ratio",
        "actord_commerce_cache_refreshes_total",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
    let t = tree(&p.base).await;
    let text = t.to_string();
    for path in [
        "/commerce/users/consumer-2",
        "/commerce/products/writer-0",
        "/commerce/orders/writer-2",
        "/commerce/scheduler",
        "/commerce/cache-monitor",
    ] {
        assert!(text.contains(path), "{path} not in the tree");
    }
    // The cache worker ran on start: the monitor shows both caches and a refresh.
    until(
        Duration::from_secs(30),
        "the monitor's counters",
        || async {
            let t = tree(&p.base).await;
            let m = crate::support::actor(&t, "/commerce/cache-monitor");
            m["counters"]["cache_users"].as_u64() == Some(3)
                && m["counters"]["cache_products"].as_u64() == Some(2)
                && m["counters"]["cache_refreshes"].as_u64().unwrap_or(0) >= 1
        },
    )
    .await;
    p.shutdown().await;
    drop_schema(&schema).await;
    drop_keys(&format!("{schema}:")).await;
}

#[tokio::test]
async fn replayed_order_messages_do_not_double_count() {
    let schema = fresh_schema();
    let (p, bootstrap) = start(&schema, "").await;
    let orders = shop_with_orders(&bootstrap, 20).await;
    until(Duration::from_secs(60), "20 orders written", || async {
        counters(&schema).await.0 == 20
    })
    .await;
    // The same messages again, twice over: at new offsets, with the same order ids.
    produce(&bootstrap, "orders", orders.clone()).await;
    produce(&bootstrap, "orders", orders).await;
    produce(
        &bootstrap,
        "orders",
        vec![order(
            "O-last",
            "U0",
            "P0",
            1,
            1_000,
            t0() + chrono::Duration::days(1),
        )],
    )
    .await;
    until(Duration::from_secs(60), "the marker order", || async {
        counters(&schema).await.0 == 21
    })
    .await;
    assert_eq!(counters(&schema).await, (21, 21, 0));
    p.shutdown().await;
    drop_schema(&schema).await;
    drop_keys(&format!("{schema}:")).await;
}

#[tokio::test]
async fn an_order_before_its_user_lands_once_the_user_arrives() {
    let schema = fresh_schema();
    let (p, bootstrap) = start(&schema, "fk_retry_for = \"120s\"").await;
    let at = t0();
    produce(&bootstrap, "products", vec![product("P-late", 5_000, at)]).await;
    produce(
        &bootstrap,
        "orders",
        vec![order("O-early", "U-late", "P-late", 2, 5_000, at)],
    )
    .await;
    // The order is read and held back while its user is missing.
    until(Duration::from_secs(60), "the order held back", || async {
        get(&p.base, "/metrics")
            .await
            .1
            .lines()
            .any(|l| l.starts_with("actord_commerce_orders_waiting_total") && !l.ends_with(" 0"))
    })
    .await;
    assert_eq!(counters(&schema).await.0, 0);
    produce(&bootstrap, "users", vec![user("U-late", at)]).await;
    until(
        Duration::from_secs(60),
        "the order after its user",
        || async { counters(&schema).await.0 == 1 },
    )
    .await;
    assert_eq!(counters(&schema).await, (1, 1, 0));
    let dlq = read_dlq(&bootstrap, usize::MAX, 1).await;
    assert!(dlq.is_empty(), "{dlq:?}");
    p.shutdown().await;
    drop_schema(&schema).await;
    drop_keys(&format!("{schema}:")).await;
}

#[tokio::test]
async fn an_order_whose_user_never_comes_is_dead_lettered_after_the_bounded_wait() {
    let schema = fresh_schema();
    let (p, bootstrap) = start(&schema, "fk_retry_for = \"3s\"").await;
    let at = t0();
    produce(&bootstrap, "users", vec![user("U1", at)]).await;
    produce(&bootstrap, "products", vec![product("P1", 5_000, at)]).await;
    // The parents of the other order are written before the orders come: with a wait this
    // short, an order that came first would be dead-lettered too.
    until(
        Duration::from_secs(60),
        "the user and the product",
        || async {
            scalar(&format!("SELECT count(*) FROM \"{schema}\".users")).await == 1
                && scalar(&format!("SELECT count(*) FROM \"{schema}\".products")).await == 1
        },
    )
    .await;
    produce(
        &bootstrap,
        "orders",
        vec![
            order("O-orphan", "U-nobody", "P1", 1, 5_000, at),
            order("O-fine", "U1", "P1", 1, 5_000, at),
        ],
    )
    .await;
    let dlq = read_dlq(&bootstrap, 1, 4).await;
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let letter = dlq[0].0.to_string();
    assert!(
        letter.contains("O-orphan") && letter.contains("U-nobody"),
        "{letter}"
    );
    assert!(letter.contains("23503"), "{letter}");
    until(Duration::from_secs(30), "the other order", || async {
        counters(&schema).await.0 == 1
    })
    .await;
    assert_eq!(counters(&schema).await, (1, 1, 0));
    p.shutdown().await;
    drop_schema(&schema).await;
    drop_keys(&format!("{schema}:")).await;
}

#[tokio::test]
async fn the_caches_hold_exactly_the_split_pools_and_swap_atomically() {
    let schema = fresh_schema();
    let prefix = format!("{schema}:");
    let cc = commerce_config(&shop_config(&schema, ""));
    let client = pg().await;
    store::migrate(&client, &schema).await.unwrap();
    let s = format!("\"{schema}\"");
    // 700 users with history (h{i} last ordered i minutes after a moment), 500 without
    // (n{i} created i minutes after it); 800 products with distinct order counts, 400 more
    // created at distinct times with no orders.
    client
        .batch_execute(&format!(
            "INSERT INTO {s}.users (user_id, name, gender, age, address, created_at, last_ordered_at) \
             SELECT 'h' || lpad(i::text, 4, '0'), 'n', 'F', 30, 'a', TIMESTAMPTZ '2026-01-01Z', \
                    TIMESTAMPTZ '2026-06-30 12:00Z' + i * INTERVAL '1 minute' FROM generate_series(0, 699) i; \
             INSERT INTO {s}.users (user_id, name, gender, age, address, created_at) \
             SELECT 'n' || lpad(i::text, 4, '0'), 'n', 'M', 30, 'a', TIMESTAMPTZ '2026-06-30 12:00Z' + i * INTERVAL '1 minute' \
             FROM generate_series(0, 499) i; \
             INSERT INTO {s}.products (product_id, name, category, price, order_count, created_at) \
             SELECT 'p' || lpad(i::text, 4, '0'), 'x', 'food', 1000, i + 1, TIMESTAMPTZ '2026-01-01Z' + i * INTERVAL '1 minute' \
             FROM generate_series(0, 799) i; \
             INSERT INTO {s}.products (product_id, name, category, price, order_count, created_at) \
             SELECT 'q' || lpad(i::text, 4, '0'), 'x', 'food', 1000, 0, TIMESTAMPTZ '2026-03-01Z' + i * INTERVAL '1 minute' \
             FROM generate_series(0, 399) i;"
        ))
        .await
        .unwrap();
    // A reader watching the hash sizes while refreshes run sees 0 (before the first) or the
    // whole cache, never a part of it.
    let watcher = {
        let (users_key, products_key) = (cc.users_key(), cc.products_key());
        tokio::spawn(async move {
            let mut conn = redis().await;
            let mut seen = BTreeSet::new();
            for _ in 0..400 {
                let (u, p): (u64, u64) = redis::pipe()
                    .cmd("HLEN")
                    .arg(&users_key)
                    .cmd("HLEN")
                    .arg(&products_key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                seen.insert((u, p));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen
        })
    };
    let mut conn = redis().await;
    let mut last = None;
    for _ in 0..5 {
        last = Some(
            cache::refresh(&cc, &client, &mut conn, Utc::now())
                .await
                .unwrap(),
        );
    }
    let seen = watcher.await.unwrap();
    assert!(
        seen.iter().all(|s| *s == (0, 0) || *s == (1000, 1000)),
        "a reader saw a partial cache: {seen:?}"
    );
    let r = last.unwrap();
    assert_eq!(
        (
            r.users_with_history,
            r.users_without,
            r.popular,
            r.newest,
            r.refreshes
        ),
        (600, 400, 700, 300, 5)
    );
    let users: Vec<CachedUser> = cache::read(&mut conn, &cc.users_key()).await.unwrap();
    let ids: BTreeSet<String> = users.iter().map(|u| u.user_id.clone()).collect();
    // The 600 whose last order is oldest (h0000..h0599) and the 400 newest without (n0100..n0499).
    let expected: BTreeSet<String> = (0..600)
        .map(|i| format!("h{i:04}"))
        .chain((100..500).map(|i| format!("n{i:04}")))
        .collect();
    assert_eq!(ids, expected);
    assert!(users
        .iter()
        .all(|u| (u.pool == "purchased") == u.user_id.starts_with('h')));
    let products: Vec<CachedProduct> = cache::read(&mut conn, &cc.products_key()).await.unwrap();
    let ids: BTreeSet<String> = products.iter().map(|p| p.product_id.clone()).collect();
    // The 700 most ordered (p0100..p0799) and the 300 newest of the rest: q0100..q0399.
    let expected: BTreeSet<String> = (100..800)
        .map(|i| format!("p{i:04}"))
        .chain((100..400).map(|i| format!("q{i:04}")))
        .collect();
    assert_eq!(ids, expected);
    // No temporary key is left, and the live caches do not expire.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let keys: BTreeSet<String> = keys.into_iter().collect();
    assert_eq!(
        keys,
        [cc.users_key(), cc.products_key(), cc.meta_key()]
            .into_iter()
            .collect()
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(cc.users_key())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(ttl, -1);
    drop_schema(&schema).await;
    drop_keys(&prefix).await;
}

#[tokio::test]
async fn grades_match_hand_computed_values() {
    let schema = fresh_schema();
    let cc = commerce_config(&shop_config(&schema, ""));
    let client = pg().await;
    store::migrate(&client, &schema).await.unwrap();
    let s = format!("\"{schema}\"");
    let at = t0();
    client
        .batch_execute(&format!(
            "INSERT INTO {s}.users (user_id, name, gender, age, address, grade, created_at) VALUES \
             ('a', 'a', 'F', 30, 'x', 'BRONZE', '2025-01-01Z'), ('b', 'b', 'F', 30, 'x', 'BRONZE', '2025-01-01Z'), \
             ('c', 'c', 'F', 30, 'x', 'BRONZE', '2025-01-01Z'), ('d', 'd', 'F', 30, 'x', 'SILVER', '2025-01-01Z'), \
             ('e', 'e', 'F', 30, 'x', 'VIP', '2025-01-01Z'); \
             INSERT INTO {s}.products (product_id, name, category, price, created_at) VALUES ('p', 'p', 'food', 1, '2025-01-01Z');"
        ))
        .await
        .unwrap();
    // (user, total, days before `at`)
    let orders: [(&str, i64, i64); 9] = [
        ("a", 250_000, 10), // a: 250 000 → BRONZE
        ("b", 200_000, 30), // b: 300 000 exactly → SILVER
        ("b", 100_000, 170),
        ("c", 1_200_000, 5),   // c: 1 200 000 in the window → GOLD;
        ("c", 5_000_000, 200), //    5 000 000 older than six months does not count
        ("d", 1_000_000, 1),   // d: 3 000 000 → VIP
        ("d", 2_000_000, 90),
        ("e", 2_999_999, 400), // e: nothing in the window → BRONZE
        ("a", 10_000, -3),     // after `at`: does not count
    ];
    for (i, (u, total, days)) in orders.iter().enumerate() {
        client
            .execute(
                &format!(
                    "INSERT INTO {s}.orders (order_id, user_id, product_id, quantity, unit_price, total_amount, created_at) \
                     VALUES ($1, $2, 'p', 1, $3, $3, $4)"
                ),
                &[&format!("o{i}"), u, total, &(at - chrono::Duration::days(*days))],
            )
            .await
            .unwrap();
    }
    let changed = grades::update(&client, &schema, at, cc.grades)
        .await
        .unwrap();
    let rows = client
        .query(
            &format!("SELECT user_id, grade FROM {s}.users ORDER BY user_id"),
            &[],
        )
        .await
        .unwrap();
    let got: BTreeMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let want: BTreeMap<String, String> = [
        ("a", "BRONZE"),
        ("b", "SILVER"),
        ("c", "GOLD"),
        ("d", "VIP"),
        ("e", "BRONZE"),
    ]
    .into_iter()
    .map(|(u, g)| (u.to_owned(), g.to_owned()))
    .collect();
    assert_eq!(got, want);
    assert_eq!(changed, 4, "b, c, d and e change; a stays");
    assert_eq!(
        grades::update(&client, &schema, at, cc.grades)
            .await
            .unwrap(),
        0
    );
    drop_schema(&schema).await;
}

fn small_history(seed: u64) -> history::HistoryArgs {
    history::HistoryArgs {
        days: 14,
        seed,
        until: Some(chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap()),
        initial_users: 50,
        initial_products: 20,
        users_per_day: 5,
        products_per_day: 2,
        orders_per_day: 20,
    }
}

async fn fingerprint(schema: &str) -> String {
    let s = format!("\"{schema}\"");
    pg().await
        .query_one(
            &format!(
                "SELECT md5(string_agg(o::text, ',' ORDER BY o.order_id)) || \
                 (SELECT md5(string_agg(u::text, ',' ORDER BY u.user_id)) FROM {s}.users u) FROM {s}.orders o"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn history_with_a_fixed_seed_has_the_documented_distribution_and_repeats() {
    let (one, two, other) = (fresh_schema(), fresh_schema(), fresh_schema());
    let mut reports = Vec::new();
    for (schema, seed) in [(&one, 7), (&two, 7), (&other, 8)] {
        let cc = commerce_config(&shop_config(schema, ""));
        reports.push(history::run(&cc, &small_history(seed)).await.unwrap());
    }
    let r = &reports[0];
    assert_eq!(
        (r.users, r.products, r.orders),
        (50 + 14 * 5, 20 + 14 * 2, 14 * 20)
    );
    let s = format!("\"{one}\"");
    // Every day of the span holds exactly orders_per_day orders, and nothing falls outside it.
    let days = pg()
        .await
        .query(
            &format!("SELECT date_trunc('day', created_at AT TIME ZONE 'UTC')::date, count(*) FROM {s}.orders GROUP BY 1 ORDER BY 1"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(days.len(), 14);
    assert_eq!(
        days[0].get::<_, chrono::NaiveDate>(0),
        chrono::NaiveDate::from_ymd_opt(2025, 12, 18).unwrap()
    );
    assert!(days.iter().all(|d| d.get::<_, i64>(1) == 20));
    // Each buyer existed at the start of the day of the order; counters match the orders.
    assert_eq!(
        scalar(&format!(
            "SELECT count(*) FROM {s}.orders o JOIN {s}.users u USING (user_id) \
             WHERE u.created_at > date_trunc('day', o.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        ))
        .await,
        0
    );
    assert_eq!(counters(&one).await, (280, 280, 0));
    // The grades are those of the six months before the end of the span.
    let cc = commerce_config(&shop_config(&one, ""));
    let until = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    assert_eq!(
        grades::update(&pg().await, &one, until, cc.grades)
            .await
            .unwrap(),
        0
    );
    assert_eq!(r.grades.values().sum::<usize>(), r.users);
    // The same seed gives the same rows; another seed does not.
    assert_eq!(fingerprint(&one).await, fingerprint(&two).await);
    assert_ne!(fingerprint(&one).await, fingerprint(&other).await);
    assert_eq!(reports[0].grades, reports[1].grades);
    for schema in [&one, &two, &other] {
        drop_schema(schema).await;
    }
}

#[tokio::test]
async fn a_sigkill_mid_run_loses_and_double_counts_nothing() {
    let schema = fresh_schema();
    let broker = EmbeddedKafka::start().unwrap();
    for (topic, partitions) in [
        ("users", 3),
        ("products", 3),
        ("orders", 3),
        ("users-dlq", 1),
        ("products-dlq", 1),
        ("orders-dlq", 1),
    ] {
        broker.create_topic(topic, partitions).unwrap();
    }
    let bootstrap = broker.bootstrap().to_owned();
    let at = t0();
    produce(
        &bootstrap,
        "users",
        (0..40).map(|i| user(&format!("U{i}"), at)).collect(),
    )
    .await;
    produce(
        &bootstrap,
        "products",
        (0..15)
            .map(|i| product(&format!("P{i}"), 1_000 + i, at))
            .collect(),
    )
    .await;
    let n = 10_000i64;
    let orders: Vec<String> = (0..n)
        .map(|i| {
            order(
                &format!("O{i}"),
                &format!("U{}", i % 40),
                &format!("P{}", i % 15),
                1,
                1_000 + i % 15,
                at + chrono::Duration::seconds(i),
            )
        })
        .collect();
    produce(&bootstrap, "orders", orders).await;
    let toml = shop_config(&schema, "batch_size = 100");
    let env = [("KAFKA_BROKERS", bootstrap.as_str())];
    let mut first = Process::start(&toml, &[], &env);
    until(Duration::from_secs(90), "the first orders", || async {
        counters(&schema).await.0 > 0
    })
    .await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));
    let at_kill = counters(&schema).await;
    eprintln!("commerce SIGKILL test: killed at {at_kill:?} of {n}");
    // Let the broker expire the killed members' sessions before the next run joins.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let second = Process::start(&toml, &[], &env);
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while counters(&schema).await.0 < n {
        assert!(
            std::time::Instant::now() < deadline,
            "after the restart {:?} of {n} (killed at {at_kill:?}); log:\n{}",
            counters(&schema).await,
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A moment more: nothing beyond n may arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(counters(&schema).await, (n, n, 0), "killed at {at_kill:?}");
    assert_eq!(
        scalar(&format!(
            "SELECT count(DISTINCT order_id) FROM \"{schema}\".orders"
        ))
        .await,
        n
    );
    drop(second);
    drop(broker);
    drop_schema(&schema).await;
    drop_keys(&format!("{schema}:")).await;
}
