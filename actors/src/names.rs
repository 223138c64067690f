//! Metric names recorded by the actors in this crate (the binary declares its own beside them).

/// Counter: restarts of the actor at `path` (supervised and operator restarts).
pub const ACTOR_RESTARTS_TOTAL: &str = "actord_actor_restarts_total";
/// Gauge: 1 while the actor at `path` runs, else 0.
pub const ACTOR_UP: &str = "actord_actor_up";
/// Counter: times the supervisor at `path` exhausted its restart budget.
pub const SUPERVISOR_BUDGET_EXHAUSTED_TOTAL: &str = "actord_supervisor_budget_exhausted_total";
/// Counter: workers restarted because they held work without progress.
pub const ACTOR_STUCK_TOTAL: &str = "actord_actor_stuck_total";
