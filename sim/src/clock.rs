//! The virtual clock: a queue of future events ordered by (time, sequence number).
//!
//! Time is in integer microseconds, so that ordering never depends on floating-point
//! rounding, and ties are broken by the order in which events were scheduled, so a run is
//! deterministic even when many events fall on the same instant.
//!
//! Besides its events the queue holds at most one *timer*: an event that is moved rather than
//! added to when it is set again (a SecAgg+ attempt's deadline, which follows the state
//! machine's `poll_timeout`). A replaced or cleared timer leaves nothing behind.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use cohort_aggregation::time::Time;

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

/// A virtual time as the state machines take it: the time since the queue's epoch (the start
/// of the attempt).
pub fn to_time(t: Micros) -> Time {
    Time::new(Duration::from_micros(t))
}

/// The first microsecond at or after `t` (a deadline between two microseconds fires on the
/// later one, where `handle_timeout` sees it passed).
pub fn from_time(t: Time) -> Micros {
    let nanos = t.since_epoch().as_nanos().div_ceil(1_000);
    Micros::try_from(nanos).unwrap_or(Micros::MAX)
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

/// A discrete-event queue with a current time, and at most one timer.
pub struct EventQueue<E> {
    now: Micros,
    seq: u64,
    heap: BinaryHeap<Reverse<Entry<E>>>,
    timer: Option<Entry<E>>,
}

impl<E> EventQueue<E> {
    /// An empty queue at time `start`.
    pub fn new(start: Micros) -> Self {
        Self {
            now: start,
            seq: 0,
            heap: BinaryHeap::new(),
            timer: None,
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

    /// Sets the timer: `event` at `at` (not before now), in place of the timer set before, if
    /// any. It takes its turn among events of the same time as an event scheduled now would.
    pub fn set_timer(&mut self, at: Micros, event: E) {
        let at = at.max(self.now);
        self.seq += 1;
        self.timer = Some(Entry {
            at,
            seq: self.seq,
            event,
        });
    }

    /// Removes the timer, if set.
    pub fn clear_timer(&mut self) {
        self.timer = None;
    }

    /// When the timer fires, if it is set.
    pub fn timer(&self) -> Option<Micros> {
        self.timer.as_ref().map(|t| t.at)
    }

    /// Whether the timer comes before every other event.
    fn timer_first(&self) -> bool {
        match (&self.timer, self.heap.peek()) {
            (Some(t), Some(Reverse(e))) => t < e,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Pops the earliest event and advances the clock to it.
    pub fn pop(&mut self) -> Option<E> {
        self.pop_timed().map(|(_, e)| e)
    }

    /// Pops the earliest event (the timer's, when it comes first, which unsets the timer) with
    /// its time, and advances the clock to it.
    pub fn pop_timed(&mut self) -> Option<(Micros, E)> {
        let entry = if self.timer_first() {
            self.timer.take()?
        } else {
            self.heap.pop()?.0
        };
        self.now = entry.at;
        Some((entry.at, entry.event))
    }

    /// The earliest event and its time, without popping it.
    pub fn peek(&self) -> Option<(Micros, &E)> {
        if self.timer_first() {
            return self.timer.as_ref().map(|t| (t.at, &t.event));
        }
        self.heap.peek().map(|Reverse(e)| (e.at, &e.event))
    }

    /// Number of pending events, the timer included.
    pub fn len(&self) -> usize {
        self.heap.len() + usize::from(self.timer.is_some())
    }

    /// Whether no event is pending and no timer set.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty() && self.timer.is_none()
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

    #[test]
    fn the_timer_is_one_entry_that_moves() {
        let mut q = EventQueue::new(0);
        q.at(10, "a");
        q.set_timer(10, "timer");
        q.at(10, "b");
        q.set_timer(10, "timer");
        q.at(10, "c");
        assert_eq!(q.len(), 4);
        // Set again: it takes the turn of the second setting, between "b" and "c".
        assert_eq!(q.peek(), Some((10, &"a")));
        assert_eq!(q.pop(), Some("a"));
        assert_eq!(q.pop(), Some("b"));
        assert_eq!(q.peek(), Some((10, &"timer")));
        assert_eq!(q.pop(), Some("timer"));
        assert_eq!(q.timer(), None, "a timer that fired is unset");
        assert_eq!(q.pop(), Some("c"));
        // Moved: only the last setting fires, once.
        q.set_timer(50, "first");
        q.at(30, "d");
        q.set_timer(20, "moved");
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop_timed(), Some((20, "moved")));
        assert_eq!(q.pop_timed(), Some((30, "d")));
        assert!(q.is_empty());
        // Cleared: nothing fires.
        q.set_timer(40, "cleared");
        q.clear_timer();
        assert!(q.pop().is_none());
        assert_eq!(q.now(), 30);
    }

    #[test]
    fn core_times_round_up_to_the_microsecond() {
        assert_eq!(from_time(to_time(1_234_567)), 1_234_567);
        assert_eq!(from_time(Time::new(Duration::from_nanos(1_001))), 2);
        assert_eq!(from_time(Time::new(Duration::MAX)), Micros::MAX);
    }
}
