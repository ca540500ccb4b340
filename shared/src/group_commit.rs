//! Group commit: many concurrent callers' writes flushed as one statement.
//!
//! A commit costs one WAL flush whether it carries one row or a thousand, and this disk's
//! fsync is slow and erratic. So callers `submit` an item and wait; a background task
//! drains whatever has queued up meanwhile and hands the whole batch to one flush. Under
//! light load a batch is a single item and adds no latency (nothing waits on a timer);
//! under heavy load batches grow until one flush carries hundreds of rows.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

/// A flush failed, or the batcher is gone; every item of that batch gets the same error.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{name}: {message}")]
pub struct GroupCommitError {
    pub name: &'static str,
    pub message: Arc<str>,
    /// The flush failed because PostgreSQL could not be reached (callers answer 503).
    pub unavailable: bool,
}

type Pending<I, O> = (I, oneshot::Sender<Result<O, GroupCommitError>>);

/// A handle to submit items; cheap to clone. The task stops when every handle is dropped.
pub struct GroupCommit<I, O> {
    name: &'static str,
    sender: mpsc::Sender<Pending<I, O>>,
}

impl<I, O> Clone for GroupCommit<I, O> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            sender: self.sender.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> GroupCommit<I, O> {
    /// Starts the batching task. `flush` gets a batch of at most `max_batch` items and
    /// returns one output per item, in order. At most `max_in_flight` flushes run at once
    /// (each holds a database connection).
    pub fn spawn<F, Fut>(
        name: &'static str,
        max_batch: usize,
        max_in_flight: usize,
        flush: F,
    ) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<Vec<O>>> + Send + 'static,
    {
        let (sender, receiver) = mpsc::channel(max_batch.max(1) * 4);
        tokio::spawn(run(
            name,
            receiver,
            max_batch.max(1),
            max_in_flight.max(1),
            flush,
        ));
        Self { name, sender }
    }

    /// Queues `item` without waiting for its output; `false` if the queue is full (the
    /// caller then relies on its fallback, e.g. the outbox sweeper).
    pub fn offer(&self, item: I) -> bool {
        let (reply, _ignored) = oneshot::channel();
        self.sender.try_send((item, reply)).is_ok()
    }

    /// Queues `item` without waiting for its output, waiting for room in the queue until
    /// `deadline` at most; `false` if there was none by then (the caller relies on its
    /// fallback). This is back-pressure with a bound: a fast producer slows to the flush
    /// rate instead of spilling work, but a stuck flush cannot hold the producer forever.
    pub async fn offer_until(&self, item: I, deadline: tokio::time::Instant) -> bool {
        let (reply, _ignored) = oneshot::channel();
        match tokio::time::timeout_at(deadline, self.sender.send((item, reply))).await {
            Ok(sent) => sent.is_ok(),
            Err(_elapsed) => false,
        }
    }

    /// Queues `item` for the next flush and waits for its output.
    pub async fn submit(&self, item: I) -> Result<O, GroupCommitError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send((item, reply))
            .await
            .map_err(|_| self.stopped())?;
        answer.await.map_err(|_| self.stopped())?
    }

    fn stopped(&self) -> GroupCommitError {
        GroupCommitError {
            name: self.name,
            message: "the batching task stopped".into(),
            unavailable: false,
        }
    }
}

async fn run<I, O, F, Fut>(
    name: &'static str,
    mut receiver: mpsc::Receiver<Pending<I, O>>,
    max_batch: usize,
    max_in_flight: usize,
    flush: F,
) where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<Vec<O>>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        // Wait for a free flush slot first: while all slots are busy, items keep queueing
        // in the channel and the next batch grows — that is the group commit.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        if receiver.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        let (items, replies): (Vec<I>, Vec<_>) = batch.drain(..).unzip();
        let future = flush(items);
        tokio::spawn(async move {
            let outcome = future.await;
            drop(permit);
            match outcome {
                Ok(outputs) if outputs.len() == replies.len() => {
                    for (reply, output) in replies.into_iter().zip(outputs) {
                        let _ = reply.send(Ok(output));
                    }
                }
                Ok(outputs) => {
                    let error = GroupCommitError {
                        name,
                        message: format!(
                            "flush returned {} outputs for {} items",
                            outputs.len(),
                            replies.len()
                        )
                        .into(),
                        unavailable: false,
                    };
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
                Err(cause) => {
                    let error = GroupCommitError {
                        name,
                        message: format!("{cause:#}").into(),
                        unavailable: crate::store::chain_is_unavailable(&cause),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_items_share_flushes_and_keep_their_order() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let counter = flushes.clone();
        let doubler = GroupCommit::spawn("test", 100, 1, move |items: Vec<u32>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::task::yield_now().await;
                Ok(items.into_iter().map(|i| i * 2).collect())
            }
        });
        let handles: Vec<_> = (0..500u32)
            .map(|i| {
                let doubler = doubler.clone();
                tokio::spawn(async move { (i, doubler.submit(i).await.unwrap()) })
            })
            .collect();
        for handle in handles {
            let (input, output) = handle.await.unwrap();
            assert_eq!(output, input * 2);
        }
        assert!(
            flushes.load(Ordering::SeqCst) < 500,
            "items were not batched"
        );
    }

    #[tokio::test]
    async fn offer_until_waits_for_room_but_not_past_its_deadline() {
        let (release, released) = tokio::sync::watch::channel(false);
        // A flush that blocks until released, so the queue (4 x max_batch = 4) fills up.
        let blocked = GroupCommit::spawn("blocked", 1, 1, move |items: Vec<u32>| {
            let mut released = released.clone();
            async move {
                released.wait_for(|open| *open).await.ok();
                Ok(vec![(); items.len()])
            }
        });
        let soon = || tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        let mut accepted = 0;
        while blocked.offer_until(accepted, soon()).await {
            accepted += 1;
            assert!(accepted < 100, "the queue never filled");
        }
        assert!(!blocked.offer(0), "the queue is full");

        let waiting = {
            let blocked = blocked.clone();
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
                blocked.offer_until(99, deadline).await
            })
        };
        release.send(true).unwrap();
        assert!(waiting.await.unwrap(), "room appeared before the deadline");
    }

    #[tokio::test]
    async fn a_failed_flush_fails_every_item_of_its_batch() {
        let failing = GroupCommit::spawn("failing", 10, 1, |_items: Vec<u32>| async {
            Err::<Vec<u32>, _>(anyhow::anyhow!("disk on fire"))
        });
        let error = failing.submit(1).await.unwrap_err();
        assert!(error.to_string().contains("disk on fire"));
    }
}
