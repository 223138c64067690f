//! commerce's PostgreSQL part: the tables `users`, `products` and `orders`, and what each
//! consumer path writes inside the shared sink's transaction (so rows and Kafka offsets commit
//! together).
//!
//! An order inserts its row, sets its user's `last_ordered_at` and adds one to its product's
//! `order_count`, all in one statement whose counters follow only the rows actually inserted:
//! a message delivered twice (a replay below the stored offset is dropped by the sink; a
//! message published twice carries the same `order_id`) counts once.
//!
//! An order may arrive before its user or product (three topics, three groups). Such a batch
//! is a transient failure (retried with the writer's backoff) until the order has waited
//! `fk_retry_for` since this process first saw it; then it is poison, the writer isolates it by
//! splitting the batch, and it goes to the DLQ with the missing parent named. The foreign keys
//! themselves stay: SQLSTATE 23503 is classed transient for this pipeline, so a race with a
//! parent's transaction is retried too, never a fatal error.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actord_actors::record::Envelope;
use actord_actors::sink::{Progress, SinkError};
use actord_actors::ErrorKind;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio_postgres::Client;

use super::model::{Order, Product, User};
use super::names;
use crate::sinks::postgres::check::{col, INT4, INT8, TEXT, TIMESTAMPTZ};
use crate::sinks::postgres::{ident, Classifier, DbSettings, Setup, Table, Tx, Writes};

/// SQLSTATE foreign_key_violation.
pub const FK_VIOLATION: &str = "23503";

/// The classes of this pipeline's paths: a foreign-key violation is transient.
pub fn classifier() -> Classifier {
    Classifier::with_override(|code| (code == FK_VIOLATION).then_some(ErrorKind::Transient))
}

/// The tables and indexes, created idempotently.
pub fn tables(schema: &str) -> Vec<String> {
    let s = ident(schema);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.users (user_id TEXT PRIMARY KEY, name TEXT NOT NULL, \
             gender TEXT NOT NULL, age INT NOT NULL, address TEXT NOT NULL, \
             grade TEXT NOT NULL DEFAULT 'BRONZE', created_at TIMESTAMPTZ NOT NULL, \
             last_ordered_at TIMESTAMPTZ)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.products (product_id TEXT PRIMARY KEY, name TEXT NOT NULL, \
             category TEXT NOT NULL, price BIGINT NOT NULL, order_count BIGINT NOT NULL DEFAULT 0, \
             created_at TIMESTAMPTZ NOT NULL)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.orders (order_id TEXT PRIMARY KEY, \
             user_id TEXT NOT NULL REFERENCES {s}.users (user_id), \
             product_id TEXT NOT NULL REFERENCES {s}.products (product_id), \
             quantity INT NOT NULL CHECK (quantity > 0), unit_price BIGINT NOT NULL, \
             total_amount BIGINT NOT NULL, scenario TEXT, created_at TIMESTAMPTZ NOT NULL)"
        ),
        format!("CREATE INDEX IF NOT EXISTS users_last_ordered_at_idx ON {s}.users (last_ordered_at)"),
        format!("CREATE INDEX IF NOT EXISTS users_created_at_idx ON {s}.users (created_at DESC)"),
        format!("CREATE INDEX IF NOT EXISTS products_order_count_idx ON {s}.products (order_count DESC)"),
        format!("CREATE INDEX IF NOT EXISTS products_created_at_idx ON {s}.products (created_at DESC)"),
        format!("CREATE INDEX IF NOT EXISTS orders_user_created_idx ON {s}.orders (user_id, created_at)"),
        format!("CREATE INDEX IF NOT EXISTS orders_product_idx ON {s}.orders (product_id)"),
        format!("CREATE INDEX IF NOT EXISTS orders_created_at_idx ON {s}.orders (created_at)"),
    ]
}

/// What the paths write, checked against existing tables before the first row.
pub const COLUMNS: [Table; 3] = [
    Table {
        name: "users",
        columns: &[
            col("user_id", TEXT, "text"),
            col("name", TEXT, "text"),
            col("gender", TEXT, "text"),
            col("age", INT4, "integer"),
            col("address", TEXT, "text"),
            col("grade", TEXT, "text"),
            col("created_at", TIMESTAMPTZ, "timestamp with time zone"),
            col("last_ordered_at", TIMESTAMPTZ, "timestamp with time zone"),
        ],
        strict: true,
    },
    Table {
        name: "products",
        columns: &[
            col("product_id", TEXT, "text"),
            col("name", TEXT, "text"),
            col("category", TEXT, "text"),
            col("price", INT8, "bigint"),
            col("order_count", INT8, "bigint"),
            col("created_at", TIMESTAMPTZ, "timestamp with time zone"),
        ],
        strict: true,
    },
    Table {
        name: "orders",
        columns: &[
            col("order_id", TEXT, "text"),
            col("user_id", TEXT, "text"),
            col("product_id", TEXT, "text"),
            col("quantity", INT4, "integer"),
            col("unit_price", INT8, "bigint"),
            col("total_amount", INT8, "bigint"),
            col("scenario", TEXT, "text"),
            col("created_at", TIMESTAMPTZ, "timestamp with time zone"),
        ],
        strict: true,
    },
];

/// The shop's tables.
pub struct ShopTables;

impl Setup for ShopTables {
    fn tables(&self, schema: &str) -> Vec<String> {
        tables(schema)
    }

    fn columns(&self) -> Vec<Table> {
        COLUMNS.to_vec()
    }

    fn finish<'a>(
        &'a self,
        _settings: &'a DbSettings,
        _client: Client,
    ) -> BoxFuture<'a, Result<Option<String>, SinkError>> {
        Box::pin(async { Ok(None) })
    }
}

/// Creates the schema and tables on a connection of its own (the seeder, the history loader
/// and the cache worker use it before a path may have run).
pub async fn migrate(client: &Client, schema: &str) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", ident(schema)))
        .await?;
    for stmt in tables(schema) {
        client.batch_execute(&stmt).await?;
    }
    Ok(())
}

/// The users path's batch: new users, idempotently.
pub struct UserRows;

impl Writes<User> for UserRows {
    async fn write(
        &self,
        tx: &Tx<'_>,
        schema: &str,
        records: &[&Envelope<User>],
        _progress: &Progress,
        errors: &Classifier,
    ) -> Result<u64, SinkError> {
        let r: Vec<&User> = records.iter().map(|e| &e.record).collect();
        let ids: Vec<&str> = r.iter().map(|u| u.user_id.as_str()).collect();
        let names: Vec<&str> = r.iter().map(|u| u.name.as_str()).collect();
        let genders: Vec<&str> = r.iter().map(|u| u.gender.as_str()).collect();
        let ages: Vec<i32> = r.iter().map(|u| u.age).collect();
        let addresses: Vec<&str> = r.iter().map(|u| u.address.as_str()).collect();
        let grades: Vec<&str> = r.iter().map(|u| u.grade.as_str()).collect();
        let created: Vec<DateTime<Utc>> = r.iter().map(|u| u.created_at).collect();
        tx.execute(
            &format!(
                "INSERT INTO {}.users (user_id, name, gender, age, address, grade, created_at) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::timestamptz[]) \
                 ON CONFLICT (user_id) DO NOTHING",
                ident(schema)
            ),
            &[&ids, &names, &genders, &ages, &addresses, &grades, &created],
        )
        .await
        .map_err(|e| errors.sink_error(&e))
    }
}

/// The products path's batch: new products, idempotently.
pub struct ProductRows;

impl Writes<Product> for ProductRows {
    async fn write(
        &self,
        tx: &Tx<'_>,
        schema: &str,
        records: &[&Envelope<Product>],
        _progress: &Progress,
        errors: &Classifier,
    ) -> Result<u64, SinkError> {
        let r: Vec<&Product> = records.iter().map(|e| &e.record).collect();
        let ids: Vec<&str> = r.iter().map(|p| p.product_id.as_str()).collect();
        let names: Vec<&str> = r.iter().map(|p| p.name.as_str()).collect();
        let categories: Vec<&str> = r.iter().map(|p| p.category.as_str()).collect();
        let prices: Vec<i64> = r.iter().map(|p| p.price).collect();
        let created: Vec<DateTime<Utc>> = r.iter().map(|p| p.created_at).collect();
        tx.execute(
            &format!(
                "INSERT INTO {}.products (product_id, name, category, price, created_at) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::timestamptz[]) \
                 ON CONFLICT (product_id) DO NOTHING",
                ident(schema)
            ),
            &[&ids, &names, &categories, &prices, &created],
        )
        .await
        .map_err(|e| errors.sink_error(&e))
    }
}

/// An order's place in its topic, for the time it has waited for its parents.
type At = (String, i32, i64);

/// The orders path's batch; holds when each order missing a parent was first seen.
pub struct OrderRows {
    fk_retry_for: Duration,
    waiting: Mutex<HashMap<At, Instant>>,
}

impl OrderRows {
    pub fn new(fk_retry_for: Duration) -> Self {
        OrderRows {
            fk_retry_for,
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// How long the order at `at` has waited, counting from the first time it was seen here.
    fn waited(&self, at: At, now: Instant) -> Duration {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        // Orders that landed or were dead-lettered are not asked about again.
        let keep = self.fk_retry_for * 4 + Duration::from_secs(60);
        waiting.retain(|_, since| now.duration_since(*since) <= keep);
        now.duration_since(*waiting.entry(at).or_insert(now))
    }
}

/// The statement that inserts orders and moves their users' and products' counters by the
/// rows it inserted.
fn order_statement(schema: &str) -> String {
    let s = ident(schema);
    format!(
        "WITH ins AS (\
           INSERT INTO {s}.orders (order_id, user_id, product_id, quantity, unit_price, total_amount, scenario, created_at) \
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::int8[], $6::int8[], $7::text[], $8::timestamptz[]) \
           ON CONFLICT (order_id) DO NOTHING \
           RETURNING user_id, product_id, created_at), \
         u AS (\
           UPDATE {s}.users x SET last_ordered_at = GREATEST(x.last_ordered_at, m.at) \
           FROM (SELECT user_id, max(created_at) AS at FROM ins GROUP BY user_id) m \
           WHERE x.user_id = m.user_id RETURNING 1), \
         p AS (\
           UPDATE {s}.products x SET order_count = x.order_count + m.n \
           FROM (SELECT product_id, count(*) AS n FROM ins GROUP BY product_id) m \
           WHERE x.product_id = m.product_id RETURNING 1) \
         SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM u), (SELECT count(*) FROM p)"
    )
}

impl Writes<Order> for OrderRows {
    async fn write(
        &self,
        tx: &Tx<'_>,
        schema: &str,
        records: &[&Envelope<Order>],
        _progress: &Progress,
        errors: &Classifier,
    ) -> Result<u64, SinkError> {
        let pg = |e: tokio_postgres::Error| errors.sink_error(&e);
        let s = ident(schema);
        let r: Vec<&Order> = records.iter().map(|e| &e.record).collect();
        let users: Vec<&str> = r.iter().map(|o| o.user_id.as_str()).collect();
        let products: Vec<&str> = r.iter().map(|o| o.product_id.as_str()).collect();
        // Orders whose user or product is not there yet, by position in the batch.
        let missing = tx
            .query(
                &format!(
                    "SELECT i.n, u.user_id IS NULL, p.product_id IS NULL \
                     FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS i(uid, pid, n) \
                     LEFT JOIN {s}.users u ON u.user_id = i.uid \
                     LEFT JOIN {s}.products p ON p.product_id = i.pid \
                     WHERE u.user_id IS NULL OR p.product_id IS NULL ORDER BY i.n"
                ),
                &[&users, &products],
            )
            .await
            .map_err(pg)?;
        if !missing.is_empty() {
            let now = Instant::now();
            let mut expired = None;
            let mut young = None;
            for row in &missing {
                let n: i64 = row.get(0);
                let e = records[(n - 1) as usize];
                let o = &e.record;
                let parent = match (row.get::<_, bool>(1), row.get::<_, bool>(2)) {
                    (true, true) => format!("user {} and product {}", o.user_id, o.product_id),
                    (true, false) => format!("user {}", o.user_id),
                    _ => format!("product {}", o.product_id),
                };
                let origin = &e.source.origin;
                let waited = self.waited(
                    (origin.topic.to_string(), origin.partition, origin.offset),
                    now,
                );
                let line = format!(
                    "order {} names {parent}, not written after {}s",
                    o.order_id,
                    waited.as_secs()
                );
                if waited >= self.fk_retry_for {
                    expired.get_or_insert(line);
                } else {
                    young.get_or_insert(line);
                }
            }
            metrics::counter!(names::COMMERCE_ORDERS_WAITING_TOTAL).increment(1);
            if let Some(line) = expired {
                // The writer splits the batch down to this order and dead-letters it.
                return Err(SinkError::poison(
                    format!("SqlState{FK_VIOLATION}"),
                    format!(
                        "{line} (waited the configured {}s): dead-lettered",
                        self.fk_retry_for.as_secs()
                    ),
                ));
            }
            let line = young.unwrap_or_default();
            return Err(SinkError::new(
                ErrorKind::Transient,
                format!("SqlState{FK_VIOLATION}"),
                format!(
                    "{line}; retrying until it has waited {}s",
                    self.fk_retry_for.as_secs()
                ),
            ));
        }
        let ids: Vec<&str> = r.iter().map(|o| o.order_id.as_str()).collect();
        let quantities: Vec<i32> = r.iter().map(|o| o.quantity).collect();
        let unit: Vec<i64> = r.iter().map(|o| o.unit_price).collect();
        let totals: Vec<i64> = r.iter().map(|o| o.total_amount).collect();
        let scenarios: Vec<Option<&str>> = r.iter().map(|o| o.scenario.as_deref()).collect();
        let created: Vec<DateTime<Utc>> = r.iter().map(|o| o.created_at).collect();
        let row = tx
            .query_one(
                &order_statement(schema),
                &[
                    &ids,
                    &users,
                    &products,
                    &quantities,
                    &unit,
                    &totals,
                    &scenarios,
                    &created,
                ],
            )
            .await
            .map_err(pg)?;
        let inserted: i64 = row.get(0);
        Ok(inserted as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_key_violation_is_transient_here_only() {
        assert_eq!(classifier().code(FK_VIOLATION), ErrorKind::Transient);
        assert_eq!(classifier().code("23514"), ErrorKind::Poison);
    }

    #[test]
    fn an_order_waits_from_the_first_time_it_was_seen() {
        let rows = OrderRows::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = ("orders".to_owned(), 0, 5);
        assert_eq!(rows.waited(at.clone(), t0), Duration::ZERO);
        assert_eq!(
            rows.waited(at, t0 + Duration::from_secs(4)),
            Duration::from_secs(4)
        );
    }
}
