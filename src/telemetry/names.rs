//! Every metric name actord exports, with its help text. Labels come from bounded sets only:
//! pipeline, path, sink, topic, error_kind.

pub use actord_actors::names::{
    ACTOR_RESTARTS_TOTAL, ACTOR_STUCK_TOTAL, ACTOR_UP, SUPERVISOR_BUDGET_EXHAUSTED_TOTAL,
};

/// Gauge, always 1, labelled with the version.
pub const BUILD_INFO: &str = "actord_build_info";
/// Gauge: 1 while the pipeline's supervisor runs, else 0.
pub const PIPELINE_UP: &str = "actord_pipeline_up";
/// Counter: beats of the heartbeat pipeline.
pub const HEARTBEAT_BEATS_TOTAL: &str = "actord_heartbeat_beats_total";
/// Counter: admin HTTP requests by endpoint and status class.
pub const ADMIN_REQUESTS_TOTAL: &str = "actord_admin_requests_total";

pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(BUILD_INFO, "Build information; the value is always 1.");
    describe_gauge!(
        PIPELINE_UP,
        "Whether the pipeline's supervisor is running (1) or not (0)."
    );
    describe_gauge!(
        ACTOR_UP,
        "Whether the actor at the path is running (1) or not (0)."
    );
    describe_counter!(ACTOR_RESTARTS_TOTAL, "Restarts of the actor at the path.");
    describe_counter!(
        ACTOR_STUCK_TOTAL,
        "Restarts of the worker at the path because it held work without progress."
    );
    describe_counter!(
        SUPERVISOR_BUDGET_EXHAUSTED_TOTAL,
        "Times the supervisor at the path exhausted its restart budget."
    );
    describe_counter!(HEARTBEAT_BEATS_TOTAL, "Beats of the heartbeat pipeline.");
    describe_counter!(ADMIN_REQUESTS_TOTAL, "Admin HTTP requests by endpoint.");
}
