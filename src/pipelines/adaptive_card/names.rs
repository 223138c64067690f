//! adaptive-card's metric names.

actord_actors::declare_metrics! {
    counter ADAPTIVE_CARD_JOBS_TOTAL = "actord_adaptive_card_jobs_total":
        "Adaptive-card jobs by stage and outcome (done, failed attempt, unavailable).";
    counter ADAPTIVE_CARD_CARDS_TOTAL = "actord_adaptive_card_cards_total":
        "Adaptive Cards upserted.";
}
