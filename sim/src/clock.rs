//! The virtual clock: a queue of future events ordered by (time, sequence number).
//!
//! Time is in integer microseconds, so that ordering never depends on floating-point
//! rounding, and ties are broken by the order in which events were scheduled, so a run is
//! deterministic even when many events fall on the same instant.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Simulated time, in microseconds since the start of the run.
pub type Micros = u64;

/// Converts seconds to [`Micros`] (rounded; negative and NaN become 0).
pub fn micros(seconds: f64) -> Micros {
    if seconds.is_finite() && seconds > 0.0 {
        (seconds * 1e6).round() as Micros
    } else {
        0
    }
}

/// Converts [`Micros`] to seconds.
pub fn seconds(t: Micros) -> f64 {
    t as f64 / 1e6
}

struct Entry<E> {
    at: Micros,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<E> Eq for Entry<E> {}
impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Entry<E> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A discrete-event queue with a current time.
pub struct EventQueue<E> {
    now: Micros,
    seq: u64,
    heap: BinaryHeap<Reverse<Entry<E>>>,
}

impl<E> EventQueue<E> {
    /// An empty queue at time `start`.
    pub fn new(start: Micros) -> Self {
        Self {
            now: start,
            seq: 0,
            heap: BinaryHeap::new(),
        }
    }

    /// The current time: that of the last event popped.
    pub fn now(&self) -> Micros {
        self.now
    }

    /// Schedules `event` at absolute time `at` (not before now).
    pub fn at(&mut self, at: Micros, event: E) {
        let at = at.max(self.now);
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            at,
            seq: self.seq,
            event,
        }));
    }

    /// Schedules `event` `delay` after now.
    pub fn after(&mut self, delay: Micros, event: E) {
        self.at(self.now.saturating_add(delay), event);
    }

    /// Pops the earliest event and advances the clock to it.
    pub fn pop(&mut self) -> Option<E> {
        self.pop_timed().map(|(_, e)| e)
    }

    /// Pops the earliest event with its time, and advances the clock to it.
    pub fn pop_timed(&mut self) -> Option<(Micros, E)> {
        let Reverse(entry) = self.heap.pop()?;
        self.now = entry.at;
        Some((entry.at, entry.event))
    }

    /// The earliest event and its time, without popping it.
    pub fn peek(&self) -> Option<(Micros, &E)> {
        self.heap.peek().map(|Reverse(e)| (e.at, &e.event))
    }

    /// Number of pending events.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no event is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_time_order_and_ties_in_schedule_order() {
        let mut q = EventQueue::new(0);
        q.at(30, "c");
        q.at(10, "a1");
        q.at(10, "a2");
        q.after(20, "b");
        assert_eq!(q.len(), 4);
        assert_eq!(q.peek(), Some((10, &"a1")));
        assert_eq!(q.pop_timed(), Some((10, "a1")));
        assert_eq!(q.now(), 10);
        assert_eq!(q.pop(), Some("a2"));
        assert_eq!(q.pop(), Some("b"));
        // Scheduling in the past lands at now.
        q.at(0, "late");
        assert_eq!(q.pop(), Some("late"));
        assert_eq!(q.now(), 20);
        assert_eq!(q.pop(), Some("c"));
        assert!(q.pop().is_none());
    }
}
