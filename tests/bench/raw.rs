//! The baseline: a bare lapin loop on the same broker doing what a job's message needs at
//! the least — persistent messages into a durable quorum queue with publisher confirms
//! (a bounded window in flight), consumed concurrently with manual acks.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

use crate::cpu::{CpuSnapshot, CpuUsage};
use crate::environment::{Environment, random_hex};

const QUEUE: &str = "bench.raw";

/// How a raw run is shaped.
pub struct RawParams {
    pub messages: usize,
    /// Unconfirmed publishes in flight at most.
    pub window: usize,
    /// The consumer's prefetch.
    pub prefetch: u16,
}

/// What a raw run measured.
pub struct RawResult {
    pub messages: usize,
    /// From the first publish to the last ack.
    pub elapsed: Duration,
    /// From the first publish to the last confirm.
    pub published_in: Duration,
    pub cpu: CpuUsage,
}

impl RawResult {
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs the loop in a fresh vhost, deleted afterwards.
pub async fn run(env: &Environment, params: &RawParams) -> anyhow::Result<RawResult> {
    let vhost = format!("bench-raw-{}", random_hex(4));
    env.management.create_vhost(&vhost).await?;
    let result = run_in(env, &vhost, params).await;
    let deleted = env.management.delete_vhost(&vhost).await;
    let result = result?;
    deleted?;
    Ok(result)
}

async fn connect(env: &Environment, vhost: &str, name: &str) -> anyhow::Result<Connection> {
    let mut url = reqwest::Url::parse(&env.amqp_url).context("--amqp-url is not a URL")?;
    url.set_path(&format!("/{vhost}"));
    let properties = ConnectionProperties::default().with_connection_name(name.to_owned().into());
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url.as_str(), properties),
    )
    .await
    .with_context(|| format!("connecting to vhost {vhost} timed out"))?
    .with_context(|| format!("connecting to vhost {vhost}"))
}

async fn run_in(env: &Environment, vhost: &str, params: &RawParams) -> anyhow::Result<RawResult> {
    let publisher_connection = connect(env, vhost, "engine-bench raw publisher").await?;
    let consumer_connection = connect(env, vhost, "engine-bench raw consumer").await?;
    let publisher = publisher_connection
        .create_channel()
        .await
        .context("opening the publisher channel")?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    publisher
        .queue_declare(
            QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .context("declaring the quorum queue")?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enabling publisher confirms")?;

    let consumer_channel = consumer_connection
        .create_channel()
        .await
        .context("opening the consumer channel")?;
    consumer_channel
        .basic_qos(params.prefetch, BasicQosOptions::default())
        .await
        .context("setting the prefetch")?;
    let mut consumer = consumer_channel
        .basic_consume(
            QUEUE.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("consuming")?;

    let total = params.messages;
    let deadline = env.deadline;
    let before = CpuSnapshot::take(None, &[]);
    let started = Instant::now();
    let consuming = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            let delivery = tokio::time::timeout_at((started + deadline).into(), consumer.next())
                .await
                .with_context(|| {
                    format!("only {acked} of {total} raw messages consumed within {deadline:?}")
                })?
                .context("the raw consumer stopped")?
                .context("a raw delivery failed")?;
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .context("acking a raw delivery")?;
            acked += 1;
        }
        anyhow::Ok(started.elapsed())
    });

    let body = vec![b'x'; 100];
    let properties = BasicProperties::default().with_delivery_mode(2);
    let publishing = async {
        let mut pending = FuturesUnordered::new();
        for _ in 0..total {
            while pending.len() >= params.window.max(1) {
                confirmed(pending.next().await)?;
            }
            let confirm = publisher
                .basic_publish(
                    "".into(),
                    QUEUE.into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties.clone(),
                )
                .await
                .context("publishing a raw message")?;
            pending.push(confirm);
        }
        while !pending.is_empty() {
            confirmed(pending.next().await)?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout_at((started + deadline).into(), publishing)
        .await
        .with_context(|| {
            format!("publishing {total} raw messages took longer than {deadline:?}")
        })??;
    let published_in = started.elapsed();
    let elapsed = consuming.await.context("the raw consumer panicked")??;
    let cpu = before.usage_until(&CpuSnapshot::take(None, &[]));
    let _ = publisher_connection.close(200, "done".into()).await;
    let _ = consumer_connection.close(200, "done".into()).await;
    Ok(RawResult {
        messages: total,
        elapsed,
        published_in,
        cpu,
    })
}

fn confirmed(confirmation: Option<lapin::Result<lapin::Confirmation>>) -> anyhow::Result<()> {
    let confirmation = confirmation
        .context("no confirm was pending")?
        .context("awaiting a publisher confirm")?;
    anyhow::ensure!(confirmation.is_ack(), "the broker nacked a raw publish");
    Ok(())
}
