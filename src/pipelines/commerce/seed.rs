//! `actord commerce seed`: creates the tables and a starting population (BRONZE users and
//! products, no orders) directly in PostgreSQL, so the cache worker and the order producer
//! have something to draw from before the generators' first events land.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use tokio_postgres::Client;

use super::config::CommerceConfig;
use super::model::{Product, User};
use super::propensity::Rng;
use super::store::{self, ShopTables};
use super::synth;
use crate::sinks::postgres::{ident, Database, DbSettings, PgPool};

/// Rows per INSERT.
const CHUNK: usize = 1000;

/// What the seeder wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seeded {
    pub users: u64,
    pub products: u64,
}

/// A pool on the shop's database, its tables created and checked by the shared sink's
/// set-up (under its lock); statements run without a timeout, for long loads.
pub async fn open(cc: &CommerceConfig) -> Result<PgPool, String> {
    let db = Database::new(
        DbSettings {
            pool_size: 1,
            statement_timeout: std::time::Duration::ZERO,
            ..cc.db.clone()
        },
        "postgres",
        Arc::new(ShopTables),
        store::classifier(),
    );
    let pool = db.pool().await.map_err(|e| e.message)?.clone();
    Ok(pool)
}

/// Inserts users, skipping ids already present.
pub async fn insert_users(client: &Client, schema: &str, users: &[User]) -> Result<u64, String> {
    let mut n = 0;
    for chunk in users.chunks(CHUNK) {
        let col = |f: fn(&User) -> &str| chunk.iter().map(f).collect::<Vec<&str>>();
        let ages: Vec<i32> = chunk.iter().map(|u| u.age).collect();
        let created: Vec<DateTime<Utc>> = chunk.iter().map(|u| u.created_at).collect();
        n += client
            .execute(
                &format!(
                    "INSERT INTO {}.users (user_id, name, gender, age, address, grade, created_at) \
                     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::timestamptz[]) \
                     ON CONFLICT (user_id) DO NOTHING",
                    ident(schema)
                ),
                &[
                    &col(|u| &u.user_id),
                    &col(|u| &u.name),
                    &col(|u| &u.gender),
                    &ages,
                    &col(|u| &u.address),
                    &col(|u| &u.grade),
                    &created,
                ],
            )
            .await
            .map_err(|e| crate::sinks::postgres::describe(&e))?;
    }
    Ok(n)
}

/// Inserts products, skipping ids already present.
pub async fn insert_products(
    client: &Client,
    schema: &str,
    products: &[Product],
) -> Result<u64, String> {
    let mut n = 0;
    for chunk in products.chunks(CHUNK) {
        let col = |f: fn(&Product) -> &str| chunk.iter().map(f).collect::<Vec<&str>>();
        let prices: Vec<i64> = chunk.iter().map(|p| p.price).collect();
        let created: Vec<DateTime<Utc>> = chunk.iter().map(|p| p.created_at).collect();
        n += client
            .execute(
                &format!(
                    "INSERT INTO {}.products (product_id, name, category, price, created_at) \
                     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::timestamptz[]) \
                     ON CONFLICT (product_id) DO NOTHING",
                    ident(schema)
                ),
                &[
                    &col(|p| &p.product_id),
                    &col(|p| &p.name),
                    &col(|p| &p.category),
                    &prices,
                    &created,
                ],
            )
            .await
            .map_err(|e| crate::sinks::postgres::describe(&e))?;
    }
    Ok(n)
}

/// Writes `users` users and `products` products created over the 30 days before now.
pub async fn seed(
    cc: &CommerceConfig,
    users: usize,
    products: usize,
    seed: Option<u64>,
) -> Result<Seeded, String> {
    let pool = open(cc).await?;
    let client = pool.get().await.map_err(|e| format!("database: {e}"))?;
    let mut rng = seed.map(Rng::new).unwrap_or_else(Rng::from_clock);
    let now = Utc::now();
    let when = |rng: &mut Rng| now - Duration::seconds(rng.range(0, 30 * 86_400));
    let u: Vec<User> = (0..users)
        .map(|_| {
            let at = when(&mut rng);
            synth::user(&mut rng, at)
        })
        .collect();
    let p: Vec<Product> = (0..products)
        .map(|_| {
            let at = when(&mut rng);
            synth::product(&mut rng, at)
        })
        .collect();
    let schema = &cc.db.schema;
    Ok(Seeded {
        users: insert_users(&client, schema, &u).await?,
        products: insert_products(&client, schema, &p).await?,
    })
}
