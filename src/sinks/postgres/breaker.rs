//! The rejection breaker: when the database rejects too large a share of recent records, the
//! path stops with an error instead of emptying the topic into the dead-letter queue.
//!
//! The share is taken over the last `window` records, counting a window that is not yet full as
//! full of accepted records: one rejected record among the first few never opens the breaker,
//! while a table that rejects everything opens it after `share × window` dead letters.
//!
//! It counts every record the path would dead-letter, whatever refused it: the database (a
//! record isolated as poison) or the decoder (a message that cannot be read). A flood of
//! undecodable messages (a producer writing another format, a topic setting pointing at the
//! wrong topic) empties the topic into the DLQ as surely as a table that rejects every row,
//! and is as much a fault to fix rather than a stream of bad records to set aside. Records
//! written count as accepted, including those dropped as already written below the stored
//! offset (a replay is not a rejection).

use std::collections::VecDeque;

/// When the breaker opens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerSettings {
    /// Records the share is measured over.
    pub window: usize,
    /// Share of `window` rejected (0 < share <= 1) above which the path stops.
    pub share: f64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            window: 1000,
            share: 0.5,
        }
    }
}

/// What became of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Accepted,
    /// Rejected by the database.
    Rejected,
    /// Could not be decoded.
    Undecodable,
}

/// The outcomes of the last `window` records.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    /// Newest last.
    outcomes: VecDeque<Outcome>,
    /// Rejected or undecodable records in the window.
    rejected: usize,
    /// Of those, undecodable.
    undecodable: usize,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Breaker {
            settings: BreakerSettings {
                window: settings.window.max(1),
                share: settings.share,
            },
            outcomes: VecDeque::new(),
            rejected: 0,
            undecodable: 0,
        }
    }

    fn push(&mut self, outcome: Outcome) {
        if self.outcomes.len() == self.settings.window {
            match self.outcomes.pop_front() {
                Some(Outcome::Rejected) => self.rejected -= 1,
                Some(Outcome::Undecodable) => {
                    self.rejected -= 1;
                    self.undecodable -= 1;
                }
                _ => {}
            }
        }
        self.outcomes.push_back(outcome);
        if outcome != Outcome::Accepted {
            self.rejected += 1;
        }
        self.undecodable += usize::from(outcome == Outcome::Undecodable);
    }

    /// `n` records written.
    pub fn accepted(&mut self, n: usize) {
        if n >= self.settings.window {
            self.outcomes.clear();
            self.rejected = 0;
            self.undecodable = 0;
        }
        for _ in 0..n.min(self.settings.window) {
            self.push(Outcome::Accepted);
        }
    }

    /// One record rejected by the database; returns whether the breaker is now open.
    pub fn rejected(&mut self) -> bool {
        self.push(Outcome::Rejected);
        self.is_open()
    }

    /// `n` records that could not be decoded; returns whether the breaker is now open.
    pub fn undecodable(&mut self, n: usize) -> bool {
        for _ in 0..n {
            self.push(Outcome::Undecodable);
        }
        self.is_open()
    }

    pub fn is_open(&self) -> bool {
        self.rejected as f64 > self.settings.share * self.settings.window as f64
    }

    /// The state in words, for errors and /health.
    pub fn describe(&self) -> String {
        format!(
            "{} of the last {} records were rejected ({} by the database, {} undecodable; the limit is {:.0}%)",
            self.rejected,
            self.settings.window,
            self.rejected - self.undecodable,
            self.undecodable,
            self.settings.share * 100.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rejection_in_a_small_batch_does_not_open_it() {
        let mut b = Breaker::new(BreakerSettings::default());
        assert!(!b.rejected(), "the first record of all");
        b.accepted(2);
        assert!(!b.is_open());
    }

    #[test]
    fn it_opens_past_the_share_of_the_window() {
        let mut b = Breaker::new(BreakerSettings::default());
        for _ in 0..500 {
            assert!(!b.rejected());
        }
        assert!(b.rejected(), "501 of 1000");
        assert!(b.describe().starts_with("501 of the last 1000"));
    }

    #[test]
    fn undecodable_records_count_with_rejected_ones() {
        let mut b = Breaker::new(BreakerSettings {
            window: 10,
            share: 0.5,
        });
        assert!(!b.undecodable(3));
        b.accepted(4);
        assert!(!b.rejected());
        assert!(!b.rejected(), "5 of 10");
        assert!(b.undecodable(1), "6 of 10");
        assert_eq!(
            b.describe(),
            "6 of the last 10 records were rejected (2 by the database, 4 undecodable; the limit is 50%)"
        );
        // Undecodable records slide out like the others.
        b.accepted(7);
        assert!(!b.is_open());
        assert!(
            b.describe().starts_with("3 of the last 10"),
            "{}",
            b.describe()
        );
        assert!(
            b.describe().contains("(2 by the database, 1 undecodable"),
            "{}",
            b.describe()
        );
    }

    #[test]
    fn accepted_records_slide_old_rejections_out() {
        let mut b = Breaker::new(BreakerSettings {
            window: 10,
            share: 0.5,
        });
        for _ in 0..6 {
            b.rejected();
        }
        assert!(b.is_open());
        b.accepted(5);
        assert!(!b.is_open(), "{}", b.describe());
        b.accepted(100);
        assert_eq!(b.rejected, 0);
        // Rejections spread thinly over a long run never add up.
        for _ in 0..100 {
            b.accepted(3);
            assert!(!b.rejected());
        }
    }
}
