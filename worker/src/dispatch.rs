//! Choosing the next delivery and giving it a slot, in two levels: [`Slots`] picks the
//! namespace (by namespace weight, with caps and headroom, see [`crate::fair_share`]), then
//! smooth weighted round-robin picks among that namespace's queues that have a delivery
//! waiting, so `critical` gets most of a namespace's turns and `bulk` still gets its share.
//! A delivery is handed out only with a [`Slot`]: the worker's concurrency is counted here,
//! per namespace, and a slot given back wakes the dispatcher. The per-namespace metrics
//! (running, waiting, job-seconds) are kept here too, where those counts change.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use tokio::sync::{Notify, mpsc};

use engine_shared::Namespace;
use engine_shared::fair_share::FairShare;
use engine_shared::metrics::{NamespaceLabels, metrics};

use crate::context::NamespaceIndex;
use crate::fair_share::Slots;

/// The receiving end of one lane (a queue of one namespace).
struct Lane<T> {
    receiver: mpsc::Receiver<T>,
    weight: i64,
    /// Smooth weighted round-robin credit.
    credit: i64,
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

/// One namespace's series of the worker's metrics.
struct Meters {
    running: Gauge,
    waiting: Gauge,
    job_seconds: Counter<f64, AtomicU64>,
}

impl Meters {
    fn new(namespace: &Namespace) -> Self {
        let labels = NamespaceLabels {
            namespace: namespace.as_str().to_owned(),
        };
        let metrics = metrics();
        Self {
            running: metrics.namespace_running.get_or_create(&labels).clone(),
            waiting: metrics.namespace_waiting.get_or_create(&labels).clone(),
            job_seconds: metrics.namespace_job_seconds.get_or_create(&labels).clone(),
        }
    }
}

/// A running job's hold on one of the worker's slots; dropping it gives the slot back.
pub struct Slot {
    slots: Arc<Mutex<Slots>>,
    ready: Arc<Notify>,
    namespace: NamespaceIndex,
    meters: Arc<Meters>,
    since: Instant,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots
            .lock()
            .expect("the slot table is never poisoned")
            .release(self.namespace);
        self.meters.running.dec();
        self.meters
            .job_seconds
            .inc_by(self.since.elapsed().as_secs_f64());
        self.ready.notify_one();
    }
}

/// One namespace's lanes and its metrics.
struct NamespaceLanes<T> {
    lanes: Vec<Lane<T>>,
    meters: Arc<Meters>,
}

/// Every lane of the process, grouped by namespace, and the slots they share.
pub struct Dispatcher<T> {
    /// Each namespace's lanes, by [`NamespaceIndex`].
    namespaces: Vec<NamespaceLanes<T>>,
    /// Shared with the [`Slot`]s handed out, which give theirs back from the job's task.
    slots: Arc<Mutex<Slots>>,
    ready: Arc<Notify>,
}

impl<T> Dispatcher<T> {
    /// A dispatcher handing out at most `concurrency` slots at once.
    pub fn new(concurrency: usize) -> Self {
        Self {
            namespaces: Vec::new(),
            slots: Arc::new(Mutex::new(Slots::new(concurrency))),
            ready: Arc::new(Notify::new()),
        }
    }

    /// Adds a namespace with its share of the slots; returns its index.
    pub fn add_namespace(&mut self, name: &Namespace, share: FairShare) -> NamespaceIndex {
        self.namespaces.push(NamespaceLanes {
            lanes: Vec::new(),
            meters: Arc::new(Meters::new(name)),
        });
        self.slots
            .lock()
            .expect("the slot table is never poisoned")
            .add(share)
    }

    /// Adds a lane of `weight` for `namespace`; `capacity` bounds what it buffers.
    pub fn add_lane(
        &mut self,
        namespace: NamespaceIndex,
        weight: u32,
        capacity: usize,
    ) -> LaneSender<T> {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        self.namespaces[usize::from(namespace)].lanes.push(Lane {
            receiver,
            weight: i64::from(weight.max(1)),
            credit: 0,
        });
        LaneSender {
            sender,
            ready: self.ready.clone(),
        }
    }

    /// Waits until a slot is free for a namespace with a delivery waiting, and returns
    /// that delivery with its slot.
    pub async fn next(&mut self) -> (NamespaceIndex, T, Slot) {
        let ready = self.ready.clone();
        loop {
            let notified = ready.notified();
            let picked = self.pick();
            self.report_waiting();
            if let Some(picked) = picked {
                return picked;
            }
            notified.await;
        }
    }

    fn pick(&mut self) -> Option<(NamespaceIndex, T, Slot)> {
        let mut slots = self.slots.lock().expect("the slot table is never poisoned");
        let namespaces = &self.namespaces;
        let waiting = |index: NamespaceIndex| {
            namespaces[usize::from(index)]
                .lanes
                .iter()
                .any(|l| !l.receiver.is_empty())
        };
        let namespace = slots.choose(waiting)?;
        let chosen = &mut self.namespaces[usize::from(namespace)];
        let item = Self::pick_lane(&mut chosen.lanes)?;
        slots.take(namespace);
        chosen.meters.running.inc();
        let slot = Slot {
            slots: self.slots.clone(),
            ready: self.ready.clone(),
            namespace,
            meters: chosen.meters.clone(),
            since: Instant::now(),
        };
        Some((namespace, item, slot))
    }

    /// Sets each namespace's waiting gauge: every wake-up (a delivery in, a slot back) runs
    /// this, so it is current whenever the dispatcher waits.
    fn report_waiting(&self) {
        for namespace in &self.namespaces {
            let waiting: usize = namespace.lanes.iter().map(|l| l.receiver.len()).sum();
            namespace
                .meters
                .waiting
                .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        }
    }

    /// Smooth weighted round-robin among the lanes that have an item.
    fn pick_lane(lanes: &mut [Lane<T>]) -> Option<T> {
        let mut total = 0;
        let mut best: Option<(usize, i64)> = None;
        for (index, lane) in lanes.iter_mut().enumerate() {
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
        let lane = &mut lanes[chosen];
        lane.credit -= total;
        lane.receiver.try_recv().ok()
    }

    /// Everything still buffered (prefetched, never started), for returning to the broker.
    pub fn drain(&mut self) -> Vec<T> {
        let mut left = Vec::new();
        for lane in self.namespaces.iter_mut().flat_map(|n| &mut n.lanes) {
            lane.receiver.close();
            while let Ok(item) = lane.receiver.try_recv() {
                left.push(item);
            }
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> Namespace {
        Namespace::parse(&format!("dispatch-test-{name}")).unwrap()
    }

    #[tokio::test]
    async fn busy_lanes_get_turns_by_weight_and_none_starves() {
        let mut dispatcher = Dispatcher::new(1);
        let namespace = dispatcher.add_namespace(&example("a"), FairShare::default());
        let lanes: Vec<_> = [(6, "critical"), (3, "default"), (1, "bulk")]
            .into_iter()
            .map(|(weight, name)| (dispatcher.add_lane(namespace, weight, 100), name))
            .collect();
        for (lane, name) in &lanes {
            for _ in 0..100 {
                lane.send(*name).await;
            }
        }
        let mut counts = std::collections::HashMap::new();
        for _ in 0..100 {
            let (_, name, _slot) = dispatcher.next().await;
            *counts.entry(name).or_insert(0) += 1;
        }
        assert_eq!(counts["critical"], 60);
        assert_eq!(counts["default"], 30);
        assert_eq!(counts["bulk"], 10);
    }

    #[tokio::test]
    async fn an_idle_lane_does_not_hold_back_a_busy_one() {
        let mut dispatcher = Dispatcher::new(1);
        let namespace = dispatcher.add_namespace(&example("a"), FairShare::default());
        let _critical = dispatcher.add_lane(namespace, 6, 10);
        let bulk = dispatcher.add_lane(namespace, 1, 10);
        for i in 0..5 {
            bulk.send(i).await;
        }
        for expected in 0..5 {
            assert_eq!(dispatcher.next().await.1, expected);
        }
    }

    #[tokio::test]
    async fn a_namespace_flooding_its_lanes_does_not_take_the_last_slot_from_another() {
        let mut dispatcher = Dispatcher::new(4);
        let (a, b) = (
            dispatcher.add_namespace(&example("a"), FairShare::default()),
            dispatcher.add_namespace(&example("b"), FairShare::default()),
        );
        let a_lane = dispatcher.add_lane(a, 1, 100);
        let b_lane = dispatcher.add_lane(b, 1, 100);
        for i in 0..100 {
            a_lane.send(i).await;
        }
        let mut held = Vec::new();
        for _ in 0..3 {
            let (namespace, _, slot) = dispatcher.next().await;
            assert_eq!(namespace, a);
            held.push(slot);
        }
        b_lane.send(1_000).await;
        let (namespace, item, b_slot) = dispatcher.next().await;
        assert_eq!((namespace, item), (b, 1_000));
        // Slots given back wake the dispatcher, and A borrows again.
        drop(b_slot);
        drop(held.pop());
        let (namespace, _, _slot) = dispatcher.next().await;
        assert_eq!(namespace, a);
    }
}
