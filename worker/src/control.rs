//! Cancel requests: the API broadcasts `{"cancel": id}` on the vhost's `jobs.control`
//! fanout; each worker reads them from its own exclusive queue and stops that job if it
//! runs it. The request is also durable in PostgreSQL, so a missed broadcast only delays
//! the stop until the attempt ends (its outcome is then recorded as `cancelled`). A
//! broadcast reaches only the jobs of the namespace whose vhost carried it: the message
//! names a job id and nothing else, and anyone who can publish there could have sent it.

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::Channel;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use engine_shared::broker::topology::CONTROL_EXCHANGE;
use engine_shared::{JobId, Namespace};

use crate::in_flight::InFlight;

#[derive(Deserialize)]
struct ControlMessage {
    cancel: JobId,
}

/// Declares this worker's control queue on `namespace`'s vhost (`channel`) and consumes it
/// until the channel closes; fires `lost` when that consumer ends, so the connection is
/// re-established like any other consumer's (a silently dead control consumer would stop
/// cancellations without anyone noticing).
pub async fn listen(
    channel: Channel,
    namespace: Namespace,
    in_flight: Arc<InFlight>,
    lost: CancellationToken,
) -> lapin::Result<()> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            CONTROL_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            match serde_json::from_slice::<ControlMessage>(&delivery.data) {
                Ok(message) => {
                    if in_flight.cancel(&namespace, message.cancel) {
                        tracing::info!(job = %message.cancel, "cancel requested; handler signalled");
                    }
                }
                Err(error) => tracing::warn!(%error, "ignoring a malformed control message"),
            }
        }
        lost.cancel();
    });
    Ok(())
}
