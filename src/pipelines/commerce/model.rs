//! Shop events as they travel on Kafka (JSON, one object per message) and their decoding.
//!
//! - `users`: `{"user_id", "name", "gender", "age", "address", "grade", "created_at"}`
//! - `products`: `{"product_id", "name", "category", "price", "created_at"}`
//! - `orders`: `{"order_id", "user_id", "product_id", "quantity", "unit_price",
//!   "total_amount", "scenario", "created_at"}`
//!
//! Times are RFC 3339; amounts are whole KRW. A message that is not such an object, misses a
//! field, or breaks a rule (quantity below 1, a negative price, a total other than
//! quantity × unit price) is poison: it goes to the topic's DLQ at once.

use actord_actors::record::{Poison, SourceRecord};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::pipelines::from_json;

/// The grade every new user starts with.
pub const NEW_USER_GRADE: &str = "BRONZE";

/// The grades, lowest first.
pub const GRADES: [&str; 4] = ["BRONZE", "SILVER", "GOLD", "VIP"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub user_id: String,
    pub name: String,
    pub gender: String,
    pub age: i32,
    pub address: String,
    #[serde(default = "bronze")]
    pub grade: String,
    pub created_at: DateTime<Utc>,
}

fn bronze() -> String {
    NEW_USER_GRADE.to_owned()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    pub product_id: String,
    pub name: String,
    pub category: String,
    pub price: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    pub order_id: String,
    pub user_id: String,
    pub product_id: String,
    pub quantity: i32,
    pub unit_price: i64,
    pub total_amount: i64,
    #[serde(default)]
    pub scenario: Option<String>,
    pub created_at: DateTime<Utc>,
}

fn json<T: for<'de> Deserialize<'de>>(r: &SourceRecord) -> Result<T, Poison> {
    from_json(r.payload.as_deref().unwrap_or_default()).map_err(|e| Poison::new("JsonError", e))
}

fn id(field: &str, v: &str) -> Result<(), Poison> {
    if v.trim().is_empty() {
        return Err(Poison::new("InvalidField", format!("`{field}` is empty")));
    }
    Ok(())
}

pub fn decode_user(r: &SourceRecord) -> Result<User, Poison> {
    let u: User = json(r)?;
    id("user_id", &u.user_id)?;
    if !GRADES.contains(&u.grade.as_str()) {
        return Err(Poison::new(
            "InvalidField",
            format!("`grade` is {:?}, expected one of {GRADES:?}", u.grade),
        ));
    }
    Ok(u)
}

pub fn decode_product(r: &SourceRecord) -> Result<Product, Poison> {
    let p: Product = json(r)?;
    id("product_id", &p.product_id)?;
    if p.price < 0 {
        return Err(Poison::new("InvalidField", "`price` is negative"));
    }
    Ok(p)
}

pub fn decode_order(r: &SourceRecord) -> Result<Order, Poison> {
    let o: Order = json(r)?;
    id("order_id", &o.order_id)?;
    id("user_id", &o.user_id)?;
    id("product_id", &o.product_id)?;
    if o.quantity < 1 {
        return Err(Poison::new("InvalidField", "`quantity` is below 1"));
    }
    if o.unit_price < 0 {
        return Err(Poison::new("InvalidField", "`unit_price` is negative"));
    }
    if Some(o.total_amount) != o.unit_price.checked_mul(o.quantity as i64) {
        return Err(Poison::new(
            "InvalidField",
            format!(
                "`total_amount` {} is not quantity {} × unit_price {}",
                o.total_amount, o.quantity, o.unit_price
            ),
        ));
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actord_actors::record::{Origin, Topic};

    fn rec(payload: &str) -> SourceRecord {
        SourceRecord {
            origin: Origin {
                topic: Topic::intern("orders"),
                partition: 0,
                offset: 0,
                epoch: 1,
            },
            key: None,
            payload: Some(payload.as_bytes().to_vec()),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    #[test]
    fn an_order_decodes_and_a_wrong_total_is_poison() {
        let ok = r#"{"order_id":"O1","user_id":"U1","product_id":"P1","quantity":2,"unit_price":1500,"total_amount":3000,"scenario":"popular_single","created_at":"2026-01-01T00:00:00Z"}"#;
        assert_eq!(decode_order(&rec(ok)).unwrap().total_amount, 3000);
        let bad = ok.replace("3000", "2999");
        assert_eq!(decode_order(&rec(&bad)).unwrap_err().class, "InvalidField");
        assert_eq!(decode_order(&rec("{")).unwrap_err().class, "JsonError");
        let zero = ok.replace("\"quantity\":2", "\"quantity\":0");
        assert!(decode_order(&rec(&zero)).is_err());
    }

    #[test]
    fn a_user_without_grade_is_bronze() {
        let u = decode_user(&rec(
            r#"{"user_id":"U1","name":"n","gender":"F","age":30,"address":"Seoul","created_at":"2026-01-01T00:00:00Z"}"#,
        ))
        .unwrap();
        assert_eq!(u.grade, "BRONZE");
    }

    use crate::pipelines::poison::{self, Field, Rng, Shape};
    use serde_json::{json, Map, Value};

    fn created_at(rng: &mut Rng) -> (Value, DateTime<Utc>) {
        let t = DateTime::from_timestamp_millis(rng.range(0, 4_000_000_000_000)).unwrap();
        let seoul = chrono::FixedOffset::east_opt(9 * 3600).unwrap();
        let text = if rng.one_in(2) {
            t.to_rfc3339()
        } else {
            t.with_timezone(&seoul).to_rfc3339()
        };
        (json!(text), t)
    }

    fn object(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn good_user(rng: &mut Rng) -> (Map<String, Value>, User) {
        let (at, created_at) = created_at(rng);
        let user = User {
            user_id: rng.text(12),
            name: rng.text(20),
            gender: rng.pick(&["M", "F"]).to_string(),
            age: rng.range(0, 120) as i32,
            address: rng.text(30),
            grade: rng.pick(&GRADES).to_string(),
            created_at,
        };
        let mut m = object(json!({
            "user_id": user.user_id, "name": user.name, "gender": user.gender, "age": user.age,
            "address": user.address, "grade": user.grade, "created_at": at,
        }));
        if user.grade == NEW_USER_GRADE && rng.one_in(2) {
            m.remove("grade");
        }
        (m, user)
    }

    fn good_product(rng: &mut Rng) -> (Map<String, Value>, Product) {
        let (at, created_at) = created_at(rng);
        let p = Product {
            product_id: rng.text(12),
            name: rng.text(20),
            category: rng.text(8),
            price: rng.range(0, 10_000_000_000),
            created_at,
        };
        let m = object(json!({
            "product_id": p.product_id, "name": p.name, "category": p.category,
            "price": p.price, "created_at": at,
        }));
        (m, p)
    }

    fn good_order(rng: &mut Rng) -> (Map<String, Value>, Order) {
        let (at, created_at) = created_at(rng);
        let quantity = rng.range(1, 1_000) as i32;
        let unit_price = rng.range(100, 100_000_000);
        let o = Order {
            order_id: rng.text(12),
            user_id: rng.text(12),
            product_id: rng.text(12),
            quantity,
            unit_price,
            total_amount: unit_price * quantity as i64,
            scenario: rng.one_in(2).then(|| rng.text(10)),
            created_at,
        };
        let m = object(json!({
            "order_id": o.order_id, "user_id": o.user_id, "product_id": o.product_id,
            "quantity": o.quantity, "unit_price": o.unit_price, "total_amount": o.total_amount,
            "scenario": o.scenario, "created_at": at,
        }));
        (m, o)
    }

    #[test]
    fn generated_malformed_users_are_all_poison_and_good_ones_decode() {
        let shape = Shape {
            fields: vec![
                ("user_id", Field::Text),
                ("name", Field::Text),
                ("gender", Field::Text),
                ("age", Field::Int32),
                ("address", Field::Text),
                ("created_at", Field::Rfc3339),
            ],
            rules: vec![
                ("user_id", json!("")),
                ("user_id", json!("  ")),
                ("grade", json!("PLATINUM")),
                ("grade", json!("")),
                ("grade", Value::Null),
                ("email", json!("a@b")),
            ],
        };
        let tally = poison::run(41, &shape, good_user, |p| {
            decode_user(&poison::record("users", p))
        });
        eprintln!("users: {tally:?}");
    }

    #[test]
    fn generated_malformed_products_are_all_poison_and_good_ones_decode() {
        let shape = Shape {
            fields: vec![
                ("product_id", Field::Text),
                ("name", Field::Text),
                ("category", Field::Text),
                ("price", Field::Int),
                ("created_at", Field::Rfc3339),
            ],
            rules: vec![
                ("product_id", json!("")),
                ("price", json!(-1)),
                ("price", json!(i64::MIN)),
                ("stock", json!(3)),
            ],
        };
        let tally = poison::run(42, &shape, good_product, |p| {
            decode_product(&poison::record("products", p))
        });
        eprintln!("products: {tally:?}");
    }

    #[test]
    fn generated_malformed_orders_are_all_poison_and_good_ones_decode() {
        let shape = Shape {
            fields: vec![
                ("order_id", Field::Text),
                ("user_id", Field::Text),
                ("product_id", Field::Text),
                ("quantity", Field::Int32),
                ("unit_price", Field::Int),
                ("total_amount", Field::Int),
                ("created_at", Field::Rfc3339),
            ],
            rules: vec![
                ("order_id", json!("")),
                ("user_id", json!(" ")),
                ("product_id", json!("")),
                ("quantity", json!(0)),
                ("quantity", json!(-3)),
                ("unit_price", json!(-1)),
                ("unit_price", json!(i64::MAX)),
                ("total_amount", json!(1)),
                ("scenario", json!(7)),
            ],
        };
        let tally = poison::run(43, &shape, good_order, |p| {
            decode_order(&poison::record("orders", p))
        });
        eprintln!("orders: {tally:?}");
    }
}
