//! Which namespace gets a free slot: the first level of the worker's scheduling (the second,
//! [`crate::dispatch`], picks among that namespace's queues by their weights).
//!
//! Each namespace has a weight and, optionally, a cap on its running jobs. A free slot goes
//! to the namespace with work waiting that is furthest below its weighted share (the least
//! running jobs per unit of weight; ties by stride, so equal weights alternate), which
//! makes busy namespaces share the slots by weight. A namespace may use more than its
//! guaranteed share (work-conserving) — but a borrowed slot must leave one slot free for
//! each other namespace that is idle below its share (at most a quarter of the slots):
//! jobs cannot be preempted, so without that headroom a namespace arriving at a worker
//! flooded by another would wait for the flood's jobs to end, which for 20-minute jobs
//! means 20 minutes.

use engine_shared::fair_share::FairShare;

use crate::context::NamespaceIndex;

/// Stride units: a namespace's pass advances by `STRIDE / weight` per slot it takes.
const STRIDE: u64 = 1 << 20;

/// One namespace's standing.
#[derive(Debug)]
struct Standing {
    share: FairShare,
    running: usize,
    /// Stride scheduling's pass: breaks ties between namespaces equally far below share.
    pass: u64,
}

/// Every served namespace's running jobs against the worker's slots.
#[derive(Debug)]
pub struct Slots {
    concurrency: usize,
    /// Each namespace's standing, by [`NamespaceIndex`].
    namespaces: Vec<Standing>,
    /// The sum of the namespaces' weights, which their guaranteed shares divide.
    total_weight: u64,
}

impl Slots {
    pub fn new(concurrency: usize) -> Self {
        Self {
            concurrency: concurrency.max(1),
            namespaces: Vec::new(),
            total_weight: 0,
        }
    }

    /// Adds a namespace; returns its index (the next position: the namespaces are added in
    /// the worker's order).
    pub fn add(&mut self, share: FairShare) -> NamespaceIndex {
        self.total_weight += u64::from(share.weight.max(1));
        self.namespaces.push(Standing {
            share,
            running: 0,
            pass: 0,
        });
        NamespaceIndex::new(self.namespaces.len() - 1)
    }

    /// Jobs of namespace `index` running now.
    pub fn running(&self, index: NamespaceIndex) -> usize {
        self.standing(index).running
    }

    /// The namespace that gets the next slot, among those `waiting` says have work, or
    /// `None` if no slot is free or none of them may take one.
    pub fn choose(&self, waiting: impl Fn(NamespaceIndex) -> bool) -> Option<NamespaceIndex> {
        let total: usize = self.namespaces.iter().map(|n| n.running).sum();
        let free = self.concurrency.checked_sub(total).filter(|&f| f > 0)?;
        // The same for every candidate: a candidate has work waiting, so is never idle.
        let idle_below_share = self
            .indexes()
            .filter(|&j| !waiting(j) && self.standing(j).running < self.guaranteed(j))
            .count();
        let headroom = idle_below_share.min(self.concurrency / 4);
        self.indexes()
            .filter(|&i| waiting(i) && self.may_take(i, free, headroom))
            .min_by(|&i, &j| {
                let (a, b) = (self.standing(i), self.standing(j));
                // (running + 1) / weight, compared without division.
                let a_after = (a.running as u64 + 1) * u64::from(b.share.weight);
                let b_after = (b.running as u64 + 1) * u64::from(a.share.weight);
                a_after.cmp(&b_after).then(a.pass.cmp(&b.pass))
            })
    }

    /// Namespace `index` took a slot.
    pub fn take(&mut self, index: NamespaceIndex) {
        let standing = &mut self.namespaces[usize::from(index)];
        standing.running += 1;
        standing.pass += STRIDE / u64::from(standing.share.weight.max(1));
    }

    /// Namespace `index` gave a slot back.
    pub fn release(&mut self, index: NamespaceIndex) {
        let standing = &mut self.namespaces[usize::from(index)];
        standing.running = standing.running.saturating_sub(1);
    }

    /// The slots namespace `index` is guaranteed while it has work: its weighted share of
    /// the concurrency (at least one), within its own cap.
    fn guaranteed(&self, index: NamespaceIndex) -> usize {
        let standing = self.standing(index);
        let share = (self.concurrency as u64 * u64::from(standing.share.weight)
            / self.total_weight.max(1))
        .max(1) as usize;
        share.min(Self::cap(standing))
    }

    fn standing(&self, index: NamespaceIndex) -> &Standing {
        &self.namespaces[usize::from(index)]
    }

    /// Every namespace's index, in order.
    fn indexes(&self) -> impl Iterator<Item = NamespaceIndex> {
        (0..self.namespaces.len()).map(NamespaceIndex::new)
    }

    fn cap(standing: &Standing) -> usize {
        standing
            .share
            .max_running
            .map_or(usize::MAX, |cap| cap as usize)
    }

    /// Whether namespace `index` may take one of the `free` slots: below its cap, and
    /// either within its guaranteed share or leaving the `headroom` idle namespaces keep.
    fn may_take(&self, index: NamespaceIndex, free: usize, headroom: usize) -> bool {
        let standing = self.standing(index);
        if standing.running >= Self::cap(standing) {
            return false;
        }
        // Taking one when borrowing must leave the headroom free.
        standing.running < self.guaranteed(index) || free > headroom
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(weight: u32, max_running: Option<u32>) -> FairShare {
        FairShare {
            weight,
            max_running,
            fleet_max_running: None,
        }
    }

    /// Fills every slot the policy hands out while `waiting` namespaces have work.
    fn fill(slots: &mut Slots, waiting: &[NamespaceIndex]) {
        while let Some(index) = slots.choose(|i| waiting.contains(&i)) {
            slots.take(index);
        }
    }

    #[test]
    fn busy_namespaces_share_the_slots_by_weight() {
        let mut slots = Slots::new(12);
        let (a, b) = (slots.add(share(2, None)), slots.add(share(1, None)));
        fill(&mut slots, &[a, b]);
        assert_eq!((slots.running(a), slots.running(b)), (8, 4));
        // Freed slots keep the split: each goes back to whoever fell below its share.
        for _ in 0..20 {
            slots.release(a);
            fill(&mut slots, &[a, b]);
            slots.release(b);
            fill(&mut slots, &[a, b]);
            assert_eq!((slots.running(a), slots.running(b)), (8, 4));
        }
    }

    #[test]
    fn a_flood_leaves_a_slot_for_an_idle_namespace_which_then_starts_at_once() {
        let mut slots = Slots::new(16);
        let (a, b) = (slots.add(share(1, None)), slots.add(share(1, None)));
        fill(&mut slots, &[a]);
        assert_eq!(
            slots.running(a),
            15,
            "work-conserving but for one slot of headroom"
        );
        assert_eq!(slots.choose(|i| i == b), Some(b));
        slots.take(b);
        // B is still below its share: a slot A frees is kept for B, not taken back.
        slots.release(a);
        assert_eq!(slots.choose(|i| i == a), None);
        assert_eq!(slots.choose(|i| i == a || i == b), Some(b));
    }

    #[test]
    fn a_lone_namespace_uses_every_slot() {
        let mut slots = Slots::new(16);
        let a = slots.add(share(1, None));
        fill(&mut slots, &[a]);
        assert_eq!(slots.running(a), 16);
    }

    #[test]
    fn max_running_caps_a_namespace_and_its_share_goes_to_the_others() {
        let mut slots = Slots::new(8);
        let (a, b) = (slots.add(share(1, Some(2))), slots.add(share(1, None)));
        fill(&mut slots, &[a, b]);
        assert_eq!((slots.running(a), slots.running(b)), (2, 6));
    }

    #[test]
    fn equal_weights_alternate_rather_than_favouring_the_first() {
        let mut slots = Slots::new(3);
        let (a, b) = (slots.add(share(1, None)), slots.add(share(1, None)));
        let mut counts = [0; 2];
        for _ in 0..100 {
            fill(&mut slots, &[a, b]);
            // The odd slot out is released by whoever holds two.
            let holder = if slots.running(a) == 2 { a } else { b };
            counts[usize::from(holder)] += 1;
            slots.release(holder);
        }
        let (a, b) = (usize::from(a), usize::from(b));
        assert!(counts[a] >= 40 && counts[b] >= 40, "{counts:?}");
    }
}
