//! How many earlier deliveries of a job's message ended without an outcome, carried across
//! the republishes the worker makes.
//!
//! RabbitMQ's quorum queues count a message's returned deliveries in `x-delivery-count`
//! and set `redelivered`, but only for that one message. When the worker republishes a
//! job instead of returning it — a deferral under a limit, a delivery given back while
//! PostgreSQL is down — the copy starts at zero. So the copy carries the count in
//! `x-tl-deliveries`: a crash loop is still seen, a job its killed worker left `running` is
//! still taken over when the copy comes back, and requeues that are not attempts stop
//! counting towards the broker's own `x-delivery-limit` (which would dead-letter a job
//! PostgreSQL still shows unfinished).

use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, ShortString};

/// The header carrying earlier deliveries without an outcome onto a republished copy.
pub const EARLIER_DELIVERIES_HEADER: &str = "x-tl-deliveries";

/// Earlier deliveries of this job's message that ended without an outcome: the broker's
/// count on this message plus what a republished copy carried.
pub fn earlier_deliveries(delivery: &Delivery) -> u32 {
    count(delivery.properties.headers().as_ref(), delivery.redelivered)
}

/// [`earlier_deliveries`] from a message's headers and `redelivered` flag.
fn count(headers: Option<&FieldTable>, redelivered: bool) -> u32 {
    let broker = header(headers, "x-delivery-count")
        .or_else(|| redelivered.then_some(1))
        .unwrap_or(0);
    broker.saturating_add(header(headers, EARLIER_DELIVERIES_HEADER).unwrap_or(0))
}

/// Returns of this very message that its queue counted (`x-delivery-count`): what the
/// broker's own `x-delivery-limit` is checked against, whatever a copy carried.
pub fn broker_deliveries(delivery: &Delivery) -> u32 {
    header(delivery.properties.headers().as_ref(), "x-delivery-count")
        .or_else(|| delivery.redelivered.then_some(1))
        .unwrap_or(0)
}

/// Whether a worker before this one held the job's message and let it go unfinished.
pub fn redelivered(delivery: &Delivery) -> bool {
    delivery.redelivered || earlier_deliveries(delivery) > 0
}

/// Sets the header of a copy of `delivery`'s message: its earlier deliveries, plus
/// `this_one` when this delivery also ends without an outcome after its job started.
pub fn carry(delivery: &Delivery, headers: &mut FieldTable, this_one: u32) {
    carry_count(earlier_deliveries(delivery), headers, this_one);
}

fn carry_count(earlier: u32, headers: &mut FieldTable, this_one: u32) {
    let count = earlier.saturating_add(this_one);
    if count > 0 {
        headers.insert(
            ShortString::from(EARLIER_DELIVERIES_HEADER),
            AMQPValue::LongLongInt(i64::from(count)),
        );
    }
}

/// An integer header, however the broker encoded it.
fn header(headers: Option<&FieldTable>, name: &str) -> Option<u32> {
    let headers = headers?;
    let value = headers
        .inner()
        .iter()
        .find(|(key, _)| key.as_str() == name)
        .map(|(_, value)| value)?;
    match value {
        AMQPValue::LongLongInt(n) => Some(u32::try_from(*n).unwrap_or(u32::MAX)),
        AMQPValue::LongInt(n) => Some(u32::try_from(*n).unwrap_or(u32::MAX)),
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::ShortInt(n) => Some(u32::try_from(*n).unwrap_or(0)),
        AMQPValue::ShortShortInt(n) => Some(u32::try_from(*n).unwrap_or(0)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, i64)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (key, value) in entries {
            table.insert(ShortString::from(*key), AMQPValue::LongLongInt(*value));
        }
        table
    }

    #[test]
    fn a_first_delivery_has_none_and_its_copy_carries_nothing() {
        assert_eq!(count(None, false), 0);
        let mut copy = FieldTable::default();
        carry_count(0, &mut copy, 0);
        assert_eq!(
            count(Some(&copy), false),
            0,
            "a fresh copy is not a redelivery"
        );
    }

    #[test]
    fn a_deferred_redelivery_comes_back_still_redelivered() {
        // The broker's second delivery (its first holder died), deferred by a limit: the
        // copy starts at x-delivery-count 0 but carries the one that ended unfinished.
        let redelivered = table(&[("x-delivery-count", 1)]);
        let mut copy = FieldTable::default();
        carry_count(count(Some(&redelivered), true), &mut copy, 0);
        assert_eq!(count(Some(&copy), false), 1);
    }

    #[test]
    fn counts_add_up_across_copies_and_the_brokers_own_count() {
        let copy = table(&[(EARLIER_DELIVERIES_HEADER, 3), ("x-delivery-count", 2)]);
        assert_eq!(count(Some(&copy), true), 5);
        let mut next = FieldTable::default();
        carry_count(count(Some(&copy), true), &mut next, 1);
        assert_eq!(
            count(Some(&next), false),
            6,
            "an attempt that ended unrecorded counts"
        );
    }

    #[test]
    fn a_redelivered_flag_without_a_count_is_one() {
        assert_eq!(count(None, true), 1);
    }
}
