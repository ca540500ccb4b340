//! The broker's clock on a delivery. RabbitMQ closes a channel whose delivery stays
//! unacked past `consumer_timeout`, counted from when it delivered the message — not from
//! when a handler started — and then redelivers everything that channel held, the
//! deliveries of healthy running jobs included. So a worker times each delivery from its
//! receipt: an attempt that could outlive that clock (the delivery waited for a slot) has
//! its delivery acked at start, and the writes after an attempt stop retrying in time to
//! give the delivery back.

use std::time::{Duration, Instant};

use lapin::message::Delivery;

/// Left at the end of the consumer timeout for handing a delivery back (publish a copy,
/// then ack) when its outcome could not be recorded in time.
const GIVE_BACK_RESERVE: Duration = Duration::from_secs(5);

/// A delivery and when the consumer took it off its channel.
pub struct Received {
    pub delivery: Delivery,
    pub at: Instant,
}

impl Received {
    pub fn now(delivery: Delivery) -> Self {
        Self {
            delivery,
            at: Instant::now(),
        }
    }
}

/// The broker's consumer timeout and the margin the API keeps attempts within it.
#[derive(Clone, Copy, Debug)]
pub struct BrokerClock {
    pub consumer_timeout: Duration,
    /// What the longest attempt the API accepts leaves of the consumer timeout for its
    /// outcome and the ack (`Settings::attempt_margin`).
    pub margin: Duration,
}

impl BrokerClock {
    /// The longest an attempt may run from its delivery's receipt.
    pub fn max_attempt(&self) -> Duration {
        self.consumer_timeout.saturating_sub(self.margin)
    }

    /// What is left of the broker's patience for a delivery received at `at`. An attempt
    /// may take half the margin: so any attempt the API accepts still starts after waiting
    /// for a slot up to that half (15 s by default), and a slot that frees up is not spent
    /// handing back deliveries that waited a moment.
    pub fn budget(&self, at: Instant) -> Budget {
        Budget {
            attempt_by: at + self.consumer_timeout.saturating_sub(self.margin / 2),
            ack_by: at + self.consumer_timeout,
        }
    }
}

/// Deadlines of one delivery.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// An attempt must end by then, leaving the rest for its outcome and the ack.
    attempt_by: Instant,
    /// The broker closes the channel soon after.
    ack_by: Instant,
}

impl Budget {
    /// Whether an attempt that may take `timeout` can start now and still end in time.
    pub fn fits(&self, timeout: Duration) -> bool {
        Instant::now() + timeout <= self.attempt_by
    }

    /// How long a write may keep retrying, at most `most`, and still leave time to hand
    /// the delivery back before the broker's deadline.
    pub fn patience(&self, most: Duration) -> Duration {
        self.ack_by
            .saturating_duration_since(Instant::now())
            .saturating_sub(GIVE_BACK_RESERVE)
            .min(most)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOCK: BrokerClock = BrokerClock {
        consumer_timeout: Duration::from_secs(60),
        margin: Duration::from_secs(20),
    };

    #[test]
    fn the_longest_attempt_the_api_allows_starts_after_a_short_wait() {
        assert_eq!(CLOCK.max_attempt(), Duration::from_secs(40));
        let budget = CLOCK.budget(Instant::now() - Duration::from_secs(9));
        assert!(budget.fits(CLOCK.max_attempt()));
        let budget = CLOCK.budget(Instant::now() - Duration::from_secs(11));
        assert!(!budget.fits(CLOCK.max_attempt()));
    }

    #[test]
    fn time_spent_waiting_for_a_slot_counts_against_the_attempt() {
        let budget = CLOCK.budget(Instant::now() - Duration::from_secs(30));
        assert!(budget.fits(Duration::from_secs(19)));
        assert!(!budget.fits(Duration::from_secs(21)));
    }

    #[test]
    fn writes_stop_retrying_in_time_to_give_the_delivery_back() {
        let budget = CLOCK.budget(Instant::now() - Duration::from_secs(50));
        let patience = budget.patience(Duration::from_secs(120));
        assert!(patience <= Duration::from_secs(5) && patience > Duration::from_secs(4));
        let late = CLOCK.budget(Instant::now() - Duration::from_secs(70));
        assert_eq!(late.patience(Duration::from_secs(120)), Duration::ZERO);
    }
}
