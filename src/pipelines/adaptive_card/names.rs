//! adaptive-card's metric names.

actord_actors::declare_metrics! {
    counter ADAPTIVE_CARD_JOBS_TOTAL = "actord_adaptive_card_jobs_total":
        "Adaptive-card jobs by stage and outcome (done, failed attempt, unavailable).";
    counter ADAPTIVE_CARD_CARDS_TOTAL = "actord_adaptive_card_cards_total":
        "Adaptive Cards upserted.";
    gauge ADAPTIVE_CARD_CIRCUIT_OPEN = "actord_adaptive_card_circuit_open":
        "1 while the dependency's circuit is open (t2a: sales-org workers pause and probe; database: it does not answer and card writes wait), else 0.";
    gauge ADAPTIVE_CARD_RUN_JOBS = "actord_adaptive_card_run_jobs":
        "Jobs of the current or last run this process drives, by stage and state (enqueued, done, dead_lettered, remaining).";
}
