//! `actord commerce history`: a deterministic past of the shop, generated in memory day by
//! day and loaded with binary COPY in one transaction.
//!
//! Rules (the same seed, span and sizes give the same rows):
//! - The span is the `days` days before `until` (default: today, 00:00 UTC).
//! - Before it: `initial_users` users and `initial_products` products, created at random in
//!   the 30 days before the span. Each day adds `users_per_day` users and `products_per_day`
//!   products at random times of the day, and `orders_per_day` orders at sorted random times.
//! - Each day's pools are drawn at the start of the day, as the cache worker would: on the
//!   first 7 days a random pool of `CACHE_BATCH_SIZE` users and products (seeded draw); from
//!   the 8th day on the split pools (users with history by `last_ordered_at` ASC + users
//!   without by `created_at` DESC, 60/40; products by `order_count` DESC + newest of the rest,
//!   70/30). The buyer is drawn by purchase propensity among the top `top_users` of the pool
//!   (the whole pool during the first 7 days), a scenario by weight, and the product from
//!   those it admits, exactly as the live order producer does.
//! - Grades are recomputed at the end of every 7th day and at the end of the span, from the
//!   six months of spending before that moment, with the configured thresholds.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use chrono::{DateTime, Duration, Months, NaiveDate, Utc};
use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;

use super::config::CommerceConfig;
use super::model::{Order, Product, User};
use super::propensity::{self, CachedProduct, CachedUser, Rng};
use super::synth;
use crate::sinks::postgres::ident;

/// What to generate.
#[derive(Clone, Debug)]
pub struct HistoryArgs {
    pub days: u32,
    pub seed: u64,
    /// The day after the span; default today.
    pub until: Option<NaiveDate>,
    pub initial_users: usize,
    pub initial_products: usize,
    pub users_per_day: usize,
    pub products_per_day: usize,
    pub orders_per_day: usize,
}

impl Default for HistoryArgs {
    fn default() -> Self {
        HistoryArgs {
            days: 365,
            seed: 42,
            until: None,
            initial_users: 1000,
            initial_products: 300,
            users_per_day: 30,
            products_per_day: 5,
            orders_per_day: 300,
        }
    }
}

/// What was generated and how fast it loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryReport {
    pub users: usize,
    pub products: usize,
    pub orders: usize,
    /// Users per grade after the last recomputation.
    pub grades: BTreeMap<String, usize>,
    /// Seconds the COPY of all rows took, and rows per second.
    pub load_seconds: f64,
    pub rows_per_second: f64,
}

/// A user as the generation tracks it.
struct HUser {
    user: User,
    last_ordered_at: Option<DateTime<Utc>>,
    /// (time, amount) of each order, oldest first.
    orders: Vec<(DateTime<Utc>, i64)>,
}

impl HUser {
    fn spent_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> (i64, i64) {
        self.orders
            .iter()
            .filter(|(t, _)| *t > from && *t <= to)
            .fold((0, 0), |(n, s), (_, a)| (n + 1, s + a))
    }

    fn cached(&self, at: DateTime<Utc>, pool: &str) -> CachedUser {
        let (n, spent) = self.spent_between(six_months_before(at), at);
        CachedUser {
            user_id: self.user.user_id.clone(),
            grade: self.user.grade.clone(),
            created_at: self.user.created_at,
            last_ordered_at: self.last_ordered_at,
            orders_6m: n,
            spent_6m: spent,
            pool: pool.to_owned(),
        }
    }
}

struct HProduct {
    product: Product,
    order_count: i64,
}

impl HProduct {
    fn cached(&self, pool: &str) -> CachedProduct {
        let p = &self.product;
        CachedProduct {
            product_id: p.product_id.clone(),
            name: p.name.clone(),
            category: p.category.clone(),
            price: p.price,
            order_count: self.order_count,
            created_at: p.created_at,
            pool: pool.to_owned(),
        }
    }
}

/// PostgreSQL's `t - INTERVAL '6 months'` in UTC.
pub fn six_months_before(t: DateTime<Utc>) -> DateTime<Utc> {
    t.checked_sub_months(Months::new(6)).unwrap_or(t)
}

/// The shop's past as rows, ready to load.
pub struct Generated {
    pub users: Vec<User>,
    pub last_ordered: Vec<Option<DateTime<Utc>>>,
    pub products: Vec<Product>,
    pub order_counts: Vec<i64>,
    pub orders: Vec<Order>,
}

/// Draws `n` distinct indexes of `0..len` (all of them when `n >= len`), in ascending order.
fn sample(rng: &mut Rng, len: usize, n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..len).collect();
    if n < len {
        for i in 0..n {
            let j = rng.range(i as i64, len as i64 - 1) as usize;
            idx.swap(i, j);
        }
        idx.truncate(n);
        idx.sort_unstable();
    }
    idx
}

fn recompute_grades(users: &mut [HUser], at: DateTime<Utc>, cc: &CommerceConfig) {
    let from = six_months_before(at);
    for u in users.iter_mut() {
        let (_, spent) = u.spent_between(from, at);
        u.user.grade = cc.grades.grade(spent).to_owned();
    }
}

/// Generates the history in memory; `tick` is called after each day.
pub fn generate(cc: &CommerceConfig, args: &HistoryArgs, mut tick: impl FnMut(u32)) -> Generated {
    let mut rng = Rng::new(args.seed);
    let until = args
        .until
        .unwrap_or_else(|| Utc::now().date_naive())
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc();
    let start = until - Duration::days(args.days as i64);
    let before = |rng: &mut Rng| start - Duration::seconds(rng.range(1, 30 * 86_400));
    let mut users: Vec<HUser> = Vec::new();
    let mut products: Vec<HProduct> = Vec::new();
    let new_user = |rng: &mut Rng, at| HUser {
        user: synth::user(rng, at),
        last_ordered_at: None,
        orders: Vec::new(),
    };
    for _ in 0..args.initial_users {
        let at = before(&mut rng);
        users.push(new_user(&mut rng, at));
    }
    for _ in 0..args.initial_products {
        let at = before(&mut rng);
        products.push(HProduct {
            product: synth::product(&mut rng, at),
            order_count: 0,
        });
    }
    let mut orders = Vec::with_capacity(args.days as usize * args.orders_per_day);
    let (with, without) = cc.cache_split_users();
    let (popular, newest) = cc.cache_split_products();
    for day in 0..args.days {
        let day_start = start + Duration::days(day as i64);
        let in_day = |rng: &mut Rng| day_start + Duration::seconds(rng.range(0, 86_399));
        for _ in 0..args.users_per_day {
            let at = in_day(&mut rng);
            users.push(new_user(&mut rng, at));
        }
        for _ in 0..args.products_per_day {
            let at = in_day(&mut rng);
            products.push(HProduct {
                product: synth::product(&mut rng, at),
                order_count: 0,
            });
        }
        // The pools as a cache filled at the start of the day would hold them.
        let live_users: Vec<usize> = (0..users.len())
            .filter(|&i| users[i].user.created_at <= day_start)
            .collect();
        let live_products: Vec<usize> = (0..products.len())
            .filter(|&i| products[i].product.created_at <= day_start)
            .collect();
        let (pool_users, pool_products, top) = if day < 7 {
            let u: Vec<usize> = sample(&mut rng, live_users.len(), cc.cache_batch_size)
                .into_iter()
                .map(|i| live_users[i])
                .collect();
            let p: Vec<usize> = sample(&mut rng, live_products.len(), cc.cache_batch_size)
                .into_iter()
                .map(|i| live_products[i])
                .collect();
            let cu: Vec<CachedUser> = u
                .iter()
                .map(|&i| users[i].cached(day_start, "random"))
                .collect();
            let cp: Vec<CachedProduct> = p.iter().map(|&i| products[i].cached("random")).collect();
            let n = cu.len();
            (cu, cp, n)
        } else {
            let mut history: Vec<usize> = live_users
                .iter()
                .copied()
                .filter(|&i| users[i].last_ordered_at.is_some())
                .collect();
            history.sort_by(|&a, &b| {
                (users[a].last_ordered_at, &users[a].user.user_id)
                    .cmp(&(users[b].last_ordered_at, &users[b].user.user_id))
            });
            history.truncate(with);
            let mut fresh: Vec<usize> = live_users
                .iter()
                .copied()
                .filter(|&i| users[i].last_ordered_at.is_none())
                .collect();
            fresh.sort_by(|&a, &b| {
                users[b]
                    .user
                    .created_at
                    .cmp(&users[a].user.created_at)
                    .then_with(|| users[a].user.user_id.cmp(&users[b].user.user_id))
            });
            fresh.truncate(without);
            let mut cu: Vec<CachedUser> = history
                .iter()
                .map(|&i| users[i].cached(day_start, "purchased"))
                .collect();
            cu.extend(fresh.iter().map(|&i| users[i].cached(day_start, "new")));
            let mut by_count = live_products.clone();
            by_count.sort_by(|&a, &b| {
                products[b]
                    .order_count
                    .cmp(&products[a].order_count)
                    .then_with(|| {
                        products[a]
                            .product
                            .product_id
                            .cmp(&products[b].product.product_id)
                    })
            });
            let mut rest = by_count.split_off(popular.min(by_count.len()));
            rest.sort_by(|&a, &b| {
                products[b]
                    .product
                    .created_at
                    .cmp(&products[a].product.created_at)
                    .then_with(|| {
                        products[a]
                            .product
                            .product_id
                            .cmp(&products[b].product.product_id)
                    })
            });
            rest.truncate(newest);
            let mut cp: Vec<CachedProduct> = by_count
                .iter()
                .map(|&i| products[i].cached("popular"))
                .collect();
            cp.extend(rest.iter().map(|&i| products[i].cached("new")));
            (cu, cp, cc.generator.top_users)
        };
        let user_index: BTreeMap<&str, usize> = users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.user.user_id.as_str(), i))
            .collect();
        let product_index: BTreeMap<&str, usize> = products
            .iter()
            .enumerate()
            .map(|(i, p)| (p.product.product_id.as_str(), i))
            .collect();
        let mut times: Vec<DateTime<Utc>> =
            (0..args.orders_per_day).map(|_| in_day(&mut rng)).collect();
        times.sort_unstable();
        let mut placed = Vec::with_capacity(times.len());
        for at in times {
            let Some(pick) = propensity::pick(
                &mut rng,
                &pool_users,
                &pool_products,
                &cc.scenarios,
                at,
                top,
            ) else {
                continue;
            };
            let order = synth::order(&mut rng, &pick, at);
            placed.push((
                user_index[pick.user.user_id.as_str()],
                product_index[pick.product.product_id.as_str()],
                order,
            ));
        }
        drop(user_index);
        drop(product_index);
        for (u, p, order) in placed {
            let user = &mut users[u];
            user.last_ordered_at = Some(
                user.last_ordered_at
                    .map_or(order.created_at, |t| t.max(order.created_at)),
            );
            user.orders.push((order.created_at, order.total_amount));
            products[p].order_count += 1;
            orders.push(order);
        }
        if day % 7 == 6 {
            recompute_grades(&mut users, day_start + Duration::days(1), cc);
        }
        tick(day + 1);
    }
    recompute_grades(&mut users, until, cc);
    Generated {
        last_ordered: users.iter().map(|u| u.last_ordered_at).collect(),
        users: users.into_iter().map(|u| u.user).collect(),
        order_counts: products.iter().map(|p| p.order_count).collect(),
        products: products.into_iter().map(|p| p.product).collect(),
        orders,
    }
}

/// Rows between two progress updates of the load.
const PROGRESS_EVERY: usize = 10_000;

/// A progress bar on stderr when it is a terminal.
struct Bar {
    on: bool,
}

impl Bar {
    fn show(&self, what: &str, done: usize, total: usize) {
        if !self.on {
            return;
        }
        let filled = (done * 30 / total.max(1)).min(30);
        eprint!(
            "\r{what:<16} [{}{}] {done}/{total}",
            "#".repeat(filled),
            "-".repeat(30 - filled)
        );
        if done >= total {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    }
}

async fn copy_rows(
    tx: &Transaction<'_>,
    statement: &str,
    types: &[Type],
    rows: impl Iterator<Item = Vec<Box<dyn ToSql + Sync + Send>>>,
    bar: &Bar,
    what: &str,
    total: usize,
) -> Result<(), String> {
    let pg = |e: tokio_postgres::Error| crate::sinks::postgres::describe(&e);
    let sink = tx.copy_in(statement).await.map_err(pg)?;
    let writer = BinaryCopyInWriter::new(sink, types);
    pin_mut!(writer);
    for (i, row) in rows.enumerate() {
        let refs: Vec<&(dyn ToSql + Sync)> =
            row.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
        writer.as_mut().write(&refs).await.map_err(pg)?;
        if (i + 1) % PROGRESS_EVERY == 0 {
            bar.show(what, i + 1, total);
        }
    }
    writer.finish().await.map_err(pg)?;
    bar.show(what, total, total);
    Ok(())
}

/// Generates and loads the history into the configured schema in one transaction.
pub async fn run(cc: &CommerceConfig, args: &HistoryArgs) -> Result<HistoryReport, String> {
    let pool = super::seed::open(cc).await?;
    let mut client = pool.get().await.map_err(|e| format!("database: {e}"))?;
    let bar = Bar {
        on: std::io::stderr().is_terminal(),
    };
    let g = generate(cc, args, |day| {
        bar.show("generating days", day as usize, args.days as usize)
    });
    let mut grades = BTreeMap::new();
    for u in &g.users {
        *grades.entry(u.grade.clone()).or_insert(0) += 1;
    }
    let s = ident(&cc.db.schema);
    let pg = |e: tokio_postgres::Error| crate::sinks::postgres::describe(&e);
    let started = Instant::now();
    let tx = client.transaction().await.map_err(pg)?;
    let boxed = |v: Vec<Box<dyn ToSql + Sync + Send>>| v;
    copy_rows(
        &tx,
        &format!("COPY {s}.users (user_id, name, gender, age, address, grade, created_at, last_ordered_at) FROM STDIN (FORMAT binary)"),
        &[Type::TEXT, Type::TEXT, Type::TEXT, Type::INT4, Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ],
        g.users.iter().zip(&g.last_ordered).map(|(u, last)| {
            boxed(vec![
                Box::new(u.user_id.clone()),
                Box::new(u.name.clone()),
                Box::new(u.gender.clone()),
                Box::new(u.age),
                Box::new(u.address.clone()),
                Box::new(u.grade.clone()),
                Box::new(u.created_at),
                Box::new(*last),
            ])
        }),
        &bar,
        "loading users",
        g.users.len(),
    )
    .await?;
    copy_rows(
        &tx,
        &format!("COPY {s}.products (product_id, name, category, price, order_count, created_at) FROM STDIN (FORMAT binary)"),
        &[Type::TEXT, Type::TEXT, Type::TEXT, Type::INT8, Type::INT8, Type::TIMESTAMPTZ],
        g.products.iter().zip(&g.order_counts).map(|(p, n)| {
            boxed(vec![
                Box::new(p.product_id.clone()),
                Box::new(p.name.clone()),
                Box::new(p.category.clone()),
                Box::new(p.price),
                Box::new(*n),
                Box::new(p.created_at),
            ])
        }),
        &bar,
        "loading products",
        g.products.len(),
    )
    .await?;
    copy_rows(
        &tx,
        &format!("COPY {s}.orders (order_id, user_id, product_id, quantity, unit_price, total_amount, scenario, created_at) FROM STDIN (FORMAT binary)"),
        &[Type::TEXT, Type::TEXT, Type::TEXT, Type::INT4, Type::INT8, Type::INT8, Type::TEXT, Type::TIMESTAMPTZ],
        g.orders.iter().map(|o| {
            boxed(vec![
                Box::new(o.order_id.clone()),
                Box::new(o.user_id.clone()),
                Box::new(o.product_id.clone()),
                Box::new(o.quantity),
                Box::new(o.unit_price),
                Box::new(o.total_amount),
                Box::new(o.scenario.clone()),
                Box::new(o.created_at),
            ])
        }),
        &bar,
        "loading orders",
        g.orders.len(),
    )
    .await?;
    tx.commit().await.map_err(pg)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let rows = g.users.len() + g.products.len() + g.orders.len();
    Ok(HistoryReport {
        users: g.users.len(),
        products: g.products.len(),
        orders: g.orders.len(),
        grades,
        load_seconds,
        rows_per_second: rows as f64 / load_seconds.max(1e-9),
    })
}
