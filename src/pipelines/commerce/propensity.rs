//! Who buys what: the purchase-propensity score, the 20 order scenarios, and the draws the
//! order producer and the history loader share (with a seeded generator, so a seed repeats).
//!
//! Score of a user, each part in 0..=1:
//!
//! ```text
//! score = 0.35·R + 0.25·F + 0.25·M + 0.15·G
//! R (recency)   = 1 / (1 + days since the last order / 30); never ordered: 0.6 / (1 + days since sign-up / 7)
//! F (frequency) = min(orders in the last 6 months, 20) / 20
//! M (monetary)  = min(spending in the last 6 months / 1 000 000 KRW, 1)
//! G (grade)     = BRONZE 0.25, SILVER 0.5, GOLD 0.75, VIP 1.0
//! ```
//!
//! The buyer is drawn from the `top_users` (200) highest scores with probability proportional
//! to the score; a scenario is drawn by weight, and the product from the products it admits.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A user as the cache holds it (`cache:users`, field = user_id, value = this as JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CachedUser {
    pub user_id: String,
    pub grade: String,
    pub created_at: DateTime<Utc>,
    pub last_ordered_at: Option<DateTime<Utc>>,
    /// Orders in the last six months.
    pub orders_6m: i64,
    /// Spending in the last six months, KRW.
    pub spent_6m: i64,
    /// "purchased" (the 600 with history) or "new" (the 400 without).
    pub pool: String,
}

/// A product as the cache holds it (`cache:products`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CachedProduct {
    pub product_id: String,
    pub name: String,
    pub category: String,
    pub price: i64,
    pub order_count: i64,
    pub created_at: DateTime<Utc>,
    /// "popular" (the 700 most ordered) or "new" (the 300 newest of the rest).
    pub pool: String,
}

/// The grade's part of the score.
pub fn grade_weight(grade: &str) -> f64 {
    match grade {
        "VIP" => 1.0,
        "GOLD" => 0.75,
        "SILVER" => 0.5,
        _ => 0.25,
    }
}

/// The purchase-propensity score of `u` at `now` (see the module documentation).
pub fn score(u: &CachedUser, now: DateTime<Utc>) -> f64 {
    let days = |t: DateTime<Utc>| ((now - t).num_seconds().max(0) as f64) / 86_400.0;
    let r = match u.last_ordered_at {
        Some(t) => 1.0 / (1.0 + days(t) / 30.0),
        None => 0.6 / (1.0 + days(u.created_at) / 7.0),
    };
    let f = (u.orders_6m.clamp(0, 20) as f64) / 20.0;
    let m = (u.spent_6m.max(0) as f64 / 1_000_000.0).min(1.0);
    0.35 * r + 0.25 * f + 0.25 * m + 0.15 * grade_weight(&u.grade)
}

/// The `top` users by score, highest first (ties by user_id, so the order is stable).
pub fn top_users(users: &[CachedUser], now: DateTime<Utc>, top: usize) -> Vec<(f64, &CachedUser)> {
    let mut scored: Vec<(f64, &CachedUser)> = users.iter().map(|u| (score(u, now), u)).collect();
    scored.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.1.user_id.cmp(&b.1.user_id))
    });
    scored.truncate(top);
    scored
}

/// Which products a scenario draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    Any,
    Popular,
    New,
}

/// Price band within the cached products: the cheapest quarter, the middle half, the
/// dearest quarter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Band {
    Any,
    Low,
    Mid,
    High,
}

/// One order scenario: a weight, where the product comes from, and how many are bought.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scenario {
    pub name: &'static str,
    pub weight: u32,
    pub pool: Pool,
    pub band: Band,
    /// Only products of this category, if set.
    pub category: Option<&'static str>,
    pub quantity: (i32, i32),
}

const fn sc(
    name: &'static str,
    weight: u32,
    pool: Pool,
    band: Band,
    category: Option<&'static str>,
    quantity: (i32, i32),
) -> Scenario {
    Scenario {
        name,
        weight,
        pool,
        band,
        category,
        quantity,
    }
}

/// The product categories the generators use.
pub const CATEGORIES: [&str; 8] = [
    "electronics",
    "fashion",
    "food",
    "beauty",
    "home",
    "sports",
    "books",
    "toys",
];

/// The 20 scenarios with their default weights (they sum to 100).
pub const SCENARIOS: [Scenario; 20] = [
    sc("popular_single", 12, Pool::Popular, Band::Any, None, (1, 1)),
    sc("popular_multi", 6, Pool::Popular, Band::Any, None, (2, 3)),
    sc("new_arrival", 8, Pool::New, Band::Any, None, (1, 1)),
    sc("new_arrival_multi", 3, Pool::New, Band::Any, None, (2, 2)),
    sc("bulk_stockup", 3, Pool::Popular, Band::Low, None, (5, 10)),
    sc("impulse_cheap", 8, Pool::Any, Band::Low, None, (1, 1)),
    sc("premium", 4, Pool::Any, Band::High, None, (1, 1)),
    sc("mid_range", 8, Pool::Any, Band::Mid, None, (1, 1)),
    sc(
        "electronics",
        5,
        Pool::Any,
        Band::Any,
        Some("electronics"),
        (1, 1),
    ),
    sc("fashion", 6, Pool::Any, Band::Any, Some("fashion"), (1, 2)),
    sc("food_weekly", 6, Pool::Any, Band::Any, Some("food"), (2, 4)),
    sc("beauty", 5, Pool::Any, Band::Any, Some("beauty"), (1, 2)),
    sc("home_living", 4, Pool::Any, Band::Any, Some("home"), (1, 1)),
    sc("sports", 3, Pool::Any, Band::Any, Some("sports"), (1, 1)),
    sc("books", 4, Pool::Any, Band::Any, Some("books"), (1, 3)),
    sc("toys_gift", 3, Pool::Any, Band::Any, Some("toys"), (1, 1)),
    sc("gift_premium", 2, Pool::Popular, Band::High, None, (1, 1)),
    sc("trending_premium", 2, Pool::New, Band::High, None, (1, 1)),
    sc("budget_popular", 4, Pool::Popular, Band::Low, None, (1, 2)),
    sc("random_any", 4, Pool::Any, Band::Any, None, (1, 1)),
];

/// A small seeded generator (SplitMix64): the same seed gives the same draws on every
/// platform and version.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Seeded from the clock, for the live generators.
    pub fn from_clock() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9);
        Rng(nanos ^ ((std::process::id() as u64) << 32))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi].
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }

    /// An index drawn with probability proportional to `weights`; `None` if all are zero.
    pub fn weighted(&mut self, weights: impl Iterator<Item = f64> + Clone) -> Option<usize> {
        let total: f64 = weights.clone().filter(|w| *w > 0.0).sum();
        if total <= 0.0 {
            return None;
        }
        let mut x = self.unit() * total;
        let mut last = None;
        for (i, w) in weights.enumerate() {
            if w <= 0.0 {
                continue;
            }
            last = Some(i);
            if x < w {
                return Some(i);
            }
            x -= w;
        }
        last
    }
}

/// What a draw decided: buyer, product, scenario and quantity.
#[derive(Clone, Debug, PartialEq)]
pub struct Pick<'a> {
    pub user: &'a CachedUser,
    pub product: &'a CachedProduct,
    pub scenario: &'static str,
    pub quantity: i32,
}

/// The products `s` admits; every product when none does.
fn candidates<'a>(s: &Scenario, products: &'a [CachedProduct]) -> Vec<&'a CachedProduct> {
    let mut prices: Vec<i64> = products.iter().map(|p| p.price).collect();
    prices.sort_unstable();
    let q = |f: f64| {
        prices
            .get(((prices.len() as f64 - 1.0) * f) as usize)
            .copied()
    };
    let (low, high) = (q(0.25).unwrap_or(0), q(0.75).unwrap_or(i64::MAX));
    let admitted: Vec<&CachedProduct> = products
        .iter()
        .filter(|p| match s.pool {
            Pool::Any => true,
            Pool::Popular => p.pool == "popular",
            Pool::New => p.pool == "new",
        })
        .filter(|p| match s.band {
            Band::Any => true,
            Band::Low => p.price <= low,
            Band::Mid => p.price > low && p.price < high,
            Band::High => p.price >= high,
        })
        .filter(|p| s.category.is_none_or(|c| p.category == c))
        .collect();
    if admitted.is_empty() {
        products.iter().collect()
    } else {
        admitted
    }
}

/// Draws one order from the caches: a buyer among the `top` by score, a scenario by weight, a
/// product the scenario admits (uniformly) and a quantity in its range.
pub fn pick<'a>(
    rng: &mut Rng,
    users: &'a [CachedUser],
    products: &'a [CachedProduct],
    scenarios: &[Scenario],
    now: DateTime<Utc>,
    top: usize,
) -> Option<Pick<'a>> {
    if products.is_empty() {
        return None;
    }
    let best = top_users(users, now, top);
    let i = rng.weighted(best.iter().map(|(s, _)| *s))?;
    let user = best[i].1;
    let s = &scenarios[rng.weighted(scenarios.iter().map(|s| s.weight as f64))?];
    let admitted = candidates(s, products);
    let product = admitted[rng.range(0, admitted.len() as i64 - 1) as usize];
    let quantity = rng.range(s.quantity.0 as i64, s.quantity.1 as i64) as i32;
    Some(Pick {
        user,
        product,
        scenario: s.name,
        quantity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn user(id: &str, grade: &str, last: Option<i64>, orders: i64, spent: i64) -> CachedUser {
        let now = Utc.with_ymd_and_hms(2026, 1, 31, 0, 0, 0).unwrap();
        CachedUser {
            user_id: id.into(),
            grade: grade.into(),
            created_at: now - chrono::Duration::days(100),
            last_ordered_at: last.map(|d| now - chrono::Duration::days(d)),
            orders_6m: orders,
            spent_6m: spent,
            pool: if last.is_some() { "purchased" } else { "new" }.into(),
        }
    }

    #[test]
    fn the_score_follows_the_documented_formula() {
        let now = Utc.with_ymd_and_hms(2026, 1, 31, 0, 0, 0).unwrap();
        // Ordered 30 days ago, 10 orders, 500 000 KRW, GOLD:
        // 0.35·0.5 + 0.25·0.5 + 0.25·0.5 + 0.15·0.75 = 0.5375
        let s = score(&user("a", "GOLD", Some(30), 10, 500_000), now);
        assert!((s - 0.5375).abs() < 1e-9, "{s}");
        // Never ordered, signed up 100 days ago, BRONZE: 0.35·0.6/(1+100/7) + 0.15·0.25
        let s = score(&user("b", "BRONZE", None, 0, 0), now);
        assert!((s - (0.35 * 0.6 / (1.0 + 100.0 / 7.0) + 0.0375)).abs() < 1e-9);
    }

    #[test]
    fn twenty_scenarios_whose_weights_sum_to_a_hundred() {
        assert_eq!(SCENARIOS.len(), 20);
        assert_eq!(SCENARIOS.iter().map(|s| s.weight).sum::<u32>(), 100);
        let mut names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 20);
    }

    #[test]
    fn buyers_come_from_the_top_only_and_a_seed_repeats() {
        let now = Utc.with_ymd_and_hms(2026, 1, 31, 0, 0, 0).unwrap();
        let users: Vec<CachedUser> = (0..50)
            .map(|i| user(&format!("u{i:02}"), "BRONZE", Some(i), i, i * 10_000))
            .collect();
        let products = vec![CachedProduct {
            product_id: "p".into(),
            name: "p".into(),
            category: "food".into(),
            price: 1000,
            order_count: 0,
            created_at: now,
            pool: "popular".into(),
        }];
        let top: Vec<String> = top_users(&users, now, 5)
            .iter()
            .map(|(_, u)| u.user_id.clone())
            .collect();
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..100)
                .map(|_| {
                    pick(&mut rng, &users, &products, &SCENARIOS, now, 5)
                        .unwrap()
                        .user
                        .user_id
                        .clone()
                })
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert!(
            a.iter().all(|u| top.contains(u)),
            "{a:?} not within {top:?}"
        );
        assert_eq!(a, draw(7));
    }
}
