//! Synthetic users, products and orders, shared by the live generators, the seeder and the
//! history loader; every draw comes from a [`Rng`], so a seed repeats.

use chrono::{DateTime, Utc};

use super::config::GeneratorSettings;
use super::model::{Order, Product, User, NEW_USER_GRADE};
use super::propensity::{Pick, Rng, CATEGORIES};

const SURNAMES: [&str; 10] = ["김", "이", "박", "최", "정", "강", "조", "윤", "장", "임"];
const GIVEN: [&str; 12] = [
    "민준", "서연", "도윤", "서윤", "시우", "지우", "하준", "하은", "지호", "수아", "예준", "지민",
];
const CITIES: [&str; 8] = [
    "서울", "부산", "인천", "대구", "대전", "광주", "수원", "울산",
];
const ADJECTIVES: [&str; 6] = ["프리미엄", "베이직", "클래식", "스마트", "에코", "데일리"];

/// Price range (KRW) of each category, in the order of [`CATEGORIES`].
const PRICES: [(i64, i64); 8] = [
    (50_000, 2_000_000),
    (15_000, 300_000),
    (3_000, 50_000),
    (8_000, 150_000),
    (10_000, 500_000),
    (10_000, 400_000),
    (8_000, 40_000),
    (10_000, 150_000),
];

fn of<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[rng.range(0, items.len() as i64 - 1) as usize]
}

/// A new user, BRONZE, created at `at`.
pub fn user(rng: &mut Rng, at: DateTime<Utc>) -> User {
    User {
        user_id: format!("U{:016x}", rng.next_u64()),
        name: format!("{}{}", of(rng, &SURNAMES), of(rng, &GIVEN)),
        gender: if rng.unit() < 0.5 { "F" } else { "M" }.to_owned(),
        age: rng.range(18, 70) as i32,
        address: format!("{} {}구", of(rng, &CITIES), rng.range(1, 25)),
        grade: NEW_USER_GRADE.to_owned(),
        created_at: at,
    }
}

/// A new product created at `at`, its price rounded to 100 KRW.
pub fn product(rng: &mut Rng, at: DateTime<Utc>) -> Product {
    let c = rng.range(0, CATEGORIES.len() as i64 - 1) as usize;
    let (lo, hi) = PRICES[c];
    let price = rng.range(lo / 100, hi / 100) * 100;
    Product {
        product_id: format!("P{:016x}", rng.next_u64()),
        name: format!(
            "{} {} {}",
            of(rng, &ADJECTIVES),
            CATEGORIES[c],
            rng.range(1, 999)
        ),
        category: CATEGORIES[c].to_owned(),
        price,
        created_at: at,
    }
}

/// The order a draw decided, placed at `at`.
pub fn order(rng: &mut Rng, pick: &Pick<'_>, at: DateTime<Utc>) -> Order {
    let unit_price = pick.product.price;
    Order {
        order_id: format!("O{:016x}", rng.next_u64()),
        user_id: pick.user.user_id.clone(),
        product_id: pick.product.product_id.clone(),
        quantity: pick.quantity,
        unit_price,
        total_amount: unit_price * pick.quantity as i64,
        scenario: Some(pick.scenario.to_owned()),
        created_at: at,
    }
}

/// New users per 10 s, `elapsed` after the start: an S-curve from `users_initial_per_10s`
/// down to `users_floor_per_10s`, half way at `users_midpoint`.
pub fn users_per_10s(g: &GeneratorSettings, elapsed: std::time::Duration) -> f64 {
    let x = (elapsed.as_secs_f64() - g.users_midpoint.as_secs_f64())
        / g.users_steepness.as_secs_f64().max(1e-3);
    g.users_floor_per_10s
        + (g.users_initial_per_10s - g.users_floor_per_10s) / (1.0 + x.clamp(-50.0, 50.0).exp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings() -> GeneratorSettings {
        GeneratorSettings {
            users_initial_per_10s: 10.0,
            users_floor_per_10s: 1.0,
            users_midpoint: Duration::from_secs(1800),
            users_steepness: Duration::from_secs(300),
            product_interval: (Duration::from_secs(6), Duration::from_secs(8)),
            order_interval: (Duration::from_secs(3), Duration::from_secs(5)),
            top_users: 200,
        }
    }

    #[test]
    fn the_user_rate_falls_along_an_s_curve() {
        let g = settings();
        let at = |m: u64| users_per_10s(&g, Duration::from_secs(m * 60));
        assert!((at(0) - 10.0).abs() < 0.03, "{}", at(0));
        assert!((at(30) - 5.5).abs() < 1e-9);
        assert!(at(10) > at(20) && at(20) > at(40) && at(40) > at(60));
        assert!((at(120) - 1.0).abs() < 1e-3);
    }

    #[test]
    fn products_are_priced_within_their_category() {
        let mut rng = Rng::new(1);
        for _ in 0..200 {
            let p = product(&mut rng, Utc::now());
            let c = CATEGORIES.iter().position(|c| *c == p.category).unwrap();
            assert!(p.price >= PRICES[c].0 && p.price <= PRICES[c].1, "{p:?}");
            assert_eq!(p.price % 100, 0);
        }
    }
}
