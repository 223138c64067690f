//! The rejection breaker: when the database rejects too large a share of recent records, the
//! path stops with an error instead of emptying the topic into the dead-letter queue.
//!
//! The share is taken over the last `window` records, counting a window that is not yet full as
//! full of accepted records: one rejected record among the first few never opens the breaker,
//! while a table that rejects everything opens it after `share × window` dead letters.

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

/// The outcomes of the last `window` records.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    /// True for a rejected record, newest last.
    outcomes: VecDeque<bool>,
    rejected: usize,
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
        }
    }

    fn push(&mut self, rejected: bool) {
        if self.outcomes.len() == self.settings.window && self.outcomes.pop_front() == Some(true) {
            self.rejected -= 1;
        }
        self.outcomes.push_back(rejected);
        self.rejected += usize::from(rejected);
    }

    /// `n` records written.
    pub fn accepted(&mut self, n: usize) {
        if n >= self.settings.window {
            self.outcomes.clear();
            self.rejected = 0;
        }
        for _ in 0..n.min(self.settings.window) {
            self.push(false);
        }
    }

    /// One record rejected; returns whether the breaker is now open.
    pub fn rejected(&mut self) -> bool {
        self.push(true);
        self.is_open()
    }

    pub fn is_open(&self) -> bool {
        self.rejected as f64 > self.settings.share * self.settings.window as f64
    }

    /// The state in words, for errors and /health.
    pub fn describe(&self) -> String {
        format!(
            "{} of the last {} records were rejected by the database (the limit is {:.0}%)",
            self.rejected,
            self.settings.window,
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
