//! The cache worker (scheduled entry `cache`, every CACHE_REFRESH_INTERVAL): loads split pools
//! from PostgreSQL into the Redis hashes the order producer reads.
//!
//! - `cache:users`: 60% of CACHE_BATCH_SIZE users with purchase history, longest since their
//!   last order first (`last_ordered_at ASC`), plus 40% without, newest first
//!   (`created_at DESC`); with 1000, 600 + 400.
//! - `cache:products`: 70% most ordered (`order_count DESC`), plus 30% newest
//!   (`created_at DESC`) of the rest; with 1000, 700 + 300.
//!
//! Ties break by id, so the same data gives the same cache. Each hash maps an id to its JSON
//! ([`CachedUser`], [`CachedProduct`]). The new contents are built under temporary keys and
//! swapped in by RENAME inside one MULTI/EXEC, with the refresh count and time in
//! `cache:meta`: a reader sees the old caches or the new ones, never a half-loaded hash.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;
use tokio_postgres::Client;

use super::config::CommerceConfig;
use super::propensity::{CachedProduct, CachedUser};
use crate::sinks::postgres::ident;

/// What one refresh loaded, and its number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refreshed {
    pub users_with_history: usize,
    pub users_without: usize,
    pub popular: usize,
    pub newest: usize,
    pub refreshes: i64,
}

/// Pairs per HSET.
const CHUNK: usize = 500;

/// Temporary keys expire if a worker dies between filling them and the swap.
const TEMP_TTL: Duration = Duration::from_secs(600);

/// The users of the cache: those with history, then those without.
pub async fn load_users(
    db: &Client,
    schema: &str,
    with: usize,
    without: usize,
) -> Result<(Vec<CachedUser>, usize), tokio_postgres::Error> {
    let s = ident(schema);
    let stats = format!(
        "LEFT JOIN LATERAL (SELECT count(*) AS n, coalesce(sum(total_amount), 0)::bigint AS spent \
         FROM {s}.orders o WHERE o.user_id = u.user_id AND o.created_at > now() - INTERVAL '6 months') st ON true"
    );
    let history = db
        .query(
            &format!(
                "SELECT u.user_id, u.grade, u.created_at, u.last_ordered_at, st.n, st.spent FROM \
                 (SELECT * FROM {s}.users WHERE last_ordered_at IS NOT NULL \
                  ORDER BY last_ordered_at ASC, user_id LIMIT $1) u {stats} \
                 ORDER BY u.last_ordered_at ASC, u.user_id"
            ),
            &[&(with as i64)],
        )
        .await?;
    let fresh = db
        .query(
            &format!(
                "SELECT user_id, grade, created_at FROM {s}.users WHERE last_ordered_at IS NULL \
                 ORDER BY created_at DESC, user_id LIMIT $1"
            ),
            &[&(without as i64)],
        )
        .await?;
    let mut users: Vec<CachedUser> = history
        .iter()
        .map(|r| CachedUser {
            user_id: r.get(0),
            grade: r.get(1),
            created_at: r.get(2),
            last_ordered_at: r.get(3),
            orders_6m: r.get(4),
            spent_6m: r.get(5),
            pool: "purchased".to_owned(),
        })
        .collect();
    let n_history = users.len();
    users.extend(fresh.iter().map(|r| CachedUser {
        user_id: r.get(0),
        grade: r.get(1),
        created_at: r.get(2),
        last_ordered_at: None,
        orders_6m: 0,
        spent_6m: 0,
        pool: "new".to_owned(),
    }));
    Ok((users, n_history))
}

/// The products of the cache: the most ordered, then the newest of the rest.
pub async fn load_products(
    db: &Client,
    schema: &str,
    popular: usize,
    newest: usize,
) -> Result<(Vec<CachedProduct>, usize), tokio_postgres::Error> {
    let s = ident(schema);
    let cols = "product_id, name, category, price, order_count, created_at";
    let top = db
        .query(
            &format!(
                "SELECT {cols} FROM {s}.products ORDER BY order_count DESC, product_id LIMIT $1"
            ),
            &[&(popular as i64)],
        )
        .await?;
    let ids: Vec<String> = top.iter().map(|r| r.get(0)).collect();
    let rest = db
        .query(
            &format!(
                "SELECT {cols} FROM {s}.products WHERE NOT (product_id = ANY($2)) \
                 ORDER BY created_at DESC, product_id LIMIT $1"
            ),
            &[&(newest as i64), &ids],
        )
        .await?;
    let row = |r: &tokio_postgres::Row, pool: &str| CachedProduct {
        product_id: r.get(0),
        name: r.get(1),
        category: r.get(2),
        price: r.get(3),
        order_count: r.get(4),
        created_at: r.get(5),
        pool: pool.to_owned(),
    };
    let mut products: Vec<CachedProduct> = top.iter().map(|r| row(r, "popular")).collect();
    let n_top = products.len();
    products.extend(rest.iter().map(|r| row(r, "new")));
    Ok((products, n_top))
}

/// Fills `key` with `entries` (id, JSON); nothing is written for an empty list.
async fn fill(
    conn: &mut MultiplexedConnection,
    key: &str,
    entries: &[(String, String)],
) -> Result<(), redis::RedisError> {
    let _: () = redis::cmd("DEL").arg(key).query_async(conn).await?;
    for chunk in entries.chunks(CHUNK) {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(key);
        for (field, value) in chunk {
            cmd.arg(field).arg(value);
        }
        let _: () = cmd.query_async(conn).await?;
    }
    if !entries.is_empty() {
        let _: () = redis::cmd("EXPIRE")
            .arg(key)
            .arg(TEMP_TTL.as_secs())
            .query_async(conn)
            .await?;
    }
    Ok(())
}

/// Loads both pools and swaps them in at once; returns what was loaded.
pub async fn refresh(
    cc: &CommerceConfig,
    db: &Client,
    conn: &mut MultiplexedConnection,
    now: DateTime<Utc>,
) -> Result<Refreshed, String> {
    let schema = &cc.db.schema;
    let (with, without) = cc.cache_split_users();
    let (popular, newest) = cc.cache_split_products();
    let (users, n_history) = load_users(db, schema, with, without)
        .await
        .map_err(|e| crate::sinks::postgres::describe(&e))?;
    let (products, n_popular) = load_products(db, schema, popular, newest)
        .await
        .map_err(|e| crate::sinks::postgres::describe(&e))?;
    let user_entries: Vec<(String, String)> = users
        .iter()
        .map(|u| {
            (
                u.user_id.clone(),
                serde_json::to_string(u).unwrap_or_default(),
            )
        })
        .collect();
    let product_entries: Vec<(String, String)> = products
        .iter()
        .map(|p| {
            (
                p.product_id.clone(),
                serde_json::to_string(p).unwrap_or_default(),
            )
        })
        .collect();
    let redis_err = |e: redis::RedisError| format!("redis: {e}");
    let token = uuid::Uuid::new_v4().simple().to_string();
    let (users_key, products_key) = (cc.users_key(), cc.products_key());
    let users_tmp = format!("{users_key}:next:{token}");
    let products_tmp = format!("{products_key}:next:{token}");
    fill(conn, &users_tmp, &user_entries)
        .await
        .map_err(redis_err)?;
    fill(conn, &products_tmp, &product_entries)
        .await
        .map_err(redis_err)?;
    let mut swap = redis::pipe();
    swap.atomic();
    for (tmp, key, empty) in [
        (&users_tmp, &users_key, user_entries.is_empty()),
        (&products_tmp, &products_key, product_entries.is_empty()),
    ] {
        if empty {
            swap.cmd("DEL").arg(key).ignore();
        } else {
            // RENAME keeps the temporary key's expiry: the live cache must not expire.
            swap.cmd("RENAME").arg(tmp).arg(key).ignore();
            swap.cmd("PERSIST").arg(key).ignore();
        }
    }
    let meta = cc.meta_key();
    swap.cmd("HINCRBY").arg(&meta).arg("refreshes").arg(1);
    swap.cmd("HSET")
        .arg(&meta)
        .arg("refreshed_at_ms")
        .arg(now.timestamp_millis())
        .ignore();
    let (refreshes,): (i64,) = swap.query_async(conn).await.map_err(redis_err)?;
    Ok(Refreshed {
        users_with_history: n_history,
        users_without: users.len() - n_history,
        popular: n_popular,
        newest: products.len() - n_popular,
        refreshes,
    })
}

/// Reads a cache hash back: its entries decoded, undecodable ones skipped.
pub async fn read<T: for<'de> serde::Deserialize<'de>>(
    conn: &mut MultiplexedConnection,
    key: &str,
) -> Result<Vec<T>, redis::RedisError> {
    // By id, so the same cache gives the same draws.
    let raw: std::collections::BTreeMap<String, String> =
        redis::cmd("HGETALL").arg(key).query_async(conn).await?;
    Ok(raw
        .values()
        .filter_map(|v| serde_json::from_str(v).ok())
        .collect())
}
