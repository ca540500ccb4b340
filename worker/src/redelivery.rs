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
    let broker = header(delivery, "x-delivery-count")
        .or_else(|| delivery.redelivered.then_some(1))
        .unwrap_or(0);
    broker.saturating_add(header(delivery, EARLIER_DELIVERIES_HEADER).unwrap_or(0))
}

/// Whether a worker before this one held the job's message and let it go unfinished.
pub fn redelivered(delivery: &Delivery) -> bool {
    delivery.redelivered || earlier_deliveries(delivery) > 0
}

/// Sets the header of a copy of `delivery`'s message: its earlier deliveries, plus
/// `this_one` when this delivery also ends without an outcome after its job started.
pub fn carry(delivery: &Delivery, headers: &mut FieldTable, this_one: u32) {
    let count = earlier_deliveries(delivery).saturating_add(this_one);
    if count > 0 {
        headers.insert(
            ShortString::from(EARLIER_DELIVERIES_HEADER),
            AMQPValue::LongLongInt(i64::from(count)),
        );
    }
}

/// An integer header of `delivery`, however the broker encoded it.
fn header(delivery: &Delivery, name: &str) -> Option<u32> {
    let headers = delivery.properties.headers().as_ref()?;
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
