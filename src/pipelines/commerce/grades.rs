//! The grade updater (scheduled entry `grades`, every 10 minutes): each user's grade from
//! their spending over the six months before a moment, in one set-based statement.
//!
//! Spending is `sum(total_amount)` of orders with `at - 6 months < created_at <= at`; a user
//! with at least `vip` is VIP, else at least `gold` GOLD, else at least `silver` SILVER, else
//! BRONZE (defaults 3 000 000 / 1 000 000 / 300 000 KRW). Only rows whose grade changes are
//! written.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use super::config::GradeThresholds;
use crate::sinks::postgres::ident;

/// The statement; `$1` the moment, `$2`..`$4` the silver, gold and VIP thresholds.
pub fn statement(schema: &str) -> String {
    let s = ident(schema);
    format!(
        "WITH spent AS (\
           SELECT user_id, sum(total_amount)::bigint AS total FROM {s}.orders \
           WHERE created_at > $1::timestamptz - INTERVAL '6 months' AND created_at <= $1::timestamptz \
           GROUP BY user_id), \
         target AS (\
           SELECT u.user_id, CASE \
             WHEN coalesce(sp.total, 0) >= $4 THEN 'VIP' \
             WHEN coalesce(sp.total, 0) >= $3 THEN 'GOLD' \
             WHEN coalesce(sp.total, 0) >= $2 THEN 'SILVER' \
             ELSE 'BRONZE' END AS grade \
           FROM {s}.users u LEFT JOIN spent sp ON sp.user_id = u.user_id) \
         UPDATE {s}.users u SET grade = t.grade FROM target t \
         WHERE u.user_id = t.user_id AND u.grade IS DISTINCT FROM t.grade"
    )
}

/// Recomputes every grade as of `at`; returns the users whose grade changed.
pub async fn update<C: GenericClient>(
    client: &C,
    schema: &str,
    at: DateTime<Utc>,
    thresholds: GradeThresholds,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            &statement(schema),
            &[&at, &thresholds.silver, &thresholds.gold, &thresholds.vip],
        )
        .await
}
