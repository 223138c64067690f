//! The recorder's own metric names (its sinks' are the core's).

actord_actors::declare_metrics! {
    counter RECORDER_MESSAGES_TOTAL = "actord_recorder_messages_total":
        "Market messages decoded by the recorder, by kind.";
    counter RECORDER_ERRORS_TOTAL = "actord_recorder_errors_total":
        "Market messages the recorder could not decode.";
}
