//! Choosing the next delivery: a lane per (namespace, queue), picked by smooth weighted
//! round-robin among lanes that have a delivery waiting, so `critical` gets most turns when
//! everything is busy, and `bulk` still gets its share — no queue starves.

use std::sync::Arc;

use tokio::sync::{Notify, mpsc};

/// Which namespace a delivery came from (an index into the runtime's namespaces).
pub type NamespaceIndex = usize;

/// The receiving end of one lane.
struct Lane<T> {
    receiver: mpsc::Receiver<T>,
    weight: i64,
    /// Smooth weighted round-robin credit.
    credit: i64,
    namespace: NamespaceIndex,
}

/// Feeds one lane: cloned into whichever consumer task currently reads that queue.
pub struct LaneSender<T> {
    sender: mpsc::Sender<T>,
    /// Wakes the dispatcher; a stored permit means no wake-up is ever lost.
    ready: Arc<Notify>,
}

impl<T> Clone for LaneSender<T> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            ready: self.ready.clone(),
        }
    }
}

impl<T> LaneSender<T> {
    /// Hands an item to the dispatcher; waits while the lane is full.
    pub async fn send(&self, item: T) -> bool {
        let sent = self.sender.send(item).await.is_ok();
        self.ready.notify_one();
        sent
    }
}

/// Every lane of the process.
pub struct Dispatcher<T> {
    lanes: Vec<Lane<T>>,
    ready: Arc<Notify>,
}

impl<T> Dispatcher<T> {
    pub fn new() -> Self {
        Self {
            lanes: Vec::new(),
            ready: Arc::new(Notify::new()),
        }
    }

    /// Adds a lane of `weight` for `namespace`; `capacity` bounds what it buffers.
    pub fn add_lane(
        &mut self,
        namespace: NamespaceIndex,
        weight: u32,
        capacity: usize,
    ) -> LaneSender<T> {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        self.lanes.push(Lane {
            receiver,
            weight: i64::from(weight.max(1)),
            credit: 0,
            namespace,
        });
        LaneSender {
            sender,
            ready: self.ready.clone(),
        }
    }

    /// Waits for the next item by weight.
    pub async fn next(&mut self) -> (NamespaceIndex, T) {
        let ready = self.ready.clone();
        loop {
            let notified = ready.notified();
            if let Some(picked) = self.pick() {
                return picked;
            }
            notified.await;
        }
    }

    fn pick(&mut self) -> Option<(NamespaceIndex, T)> {
        let mut total = 0;
        let mut best: Option<(usize, i64)> = None;
        for (index, lane) in self.lanes.iter_mut().enumerate() {
            if lane.receiver.is_empty() {
                continue;
            }
            lane.credit += lane.weight;
            total += lane.weight;
            if best.is_none_or(|(_, credit)| lane.credit > credit) {
                best = Some((index, lane.credit));
            }
        }
        let (chosen, _) = best?;
        let lane = &mut self.lanes[chosen];
        lane.credit -= total;
        lane.receiver
            .try_recv()
            .ok()
            .map(|item| (lane.namespace, item))
    }

    /// Everything still buffered (prefetched, never started), for returning to the broker.
    pub fn drain(&mut self) -> Vec<T> {
        let mut left = Vec::new();
        for lane in &mut self.lanes {
            lane.receiver.close();
            while let Ok(item) = lane.receiver.try_recv() {
                left.push(item);
            }
        }
        left
    }
}

impl<T> Default for Dispatcher<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn busy_lanes_get_turns_by_weight_and_none_starves() {
        let mut dispatcher = Dispatcher::new();
        let lanes: Vec<_> = [(6, "critical"), (3, "default"), (1, "bulk")]
            .into_iter()
            .map(|(weight, name)| (dispatcher.add_lane(0, weight, 100), name))
            .collect();
        for (lane, name) in &lanes {
            for _ in 0..100 {
                lane.send(*name).await;
            }
        }
        let mut counts = std::collections::HashMap::new();
        for _ in 0..100 {
            let (_, name) = dispatcher.next().await;
            *counts.entry(name).or_insert(0) += 1;
        }
        assert_eq!(counts["critical"], 60);
        assert_eq!(counts["default"], 30);
        assert_eq!(counts["bulk"], 10);
    }

    #[tokio::test]
    async fn an_idle_lane_does_not_hold_back_a_busy_one() {
        let mut dispatcher = Dispatcher::new();
        let _critical = dispatcher.add_lane(0, 6, 10);
        let bulk = dispatcher.add_lane(0, 1, 10);
        for i in 0..5 {
            bulk.send(i).await;
        }
        for expected in 0..5 {
            assert_eq!(dispatcher.next().await.1, expected);
        }
    }
}
