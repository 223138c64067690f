//! The heartbeat pipeline's metric names.

actord_actors::declare_metrics! {
    counter HEARTBEAT_BEATS_TOTAL = "actord_heartbeat_beats_total":
        "Beats of the heartbeat pipeline.";
    counter HEARTBEAT_SCHEDULED_BEATS_TOTAL = "actord_heartbeat_scheduled_beats_total":
        "Beats of the heartbeat's scheduled entry read back.";
}
