//! Running independent jobs on worker threads with results in input order, so that what the
//! engine computes never depends on which thread finished first.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Applies `f` to every item on up to `threads` scoped threads (items are handed out one at a
/// time, so uneven jobs balance) and returns the results in the order of `items`.
pub fn map_ordered<T, R, F>(items: &[T], threads: usize, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every item was processed")
        })
        .collect()
}

/// Like [`map_ordered`], but hands each item to `f` by value (for items that carry owned,
/// mutable state, such as a client's round state moved out and back).
pub fn map_owned<T, R, F>(items: Vec<T>, threads: usize, f: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(T) -> R + Sync,
{
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.into_iter().map(f).collect();
    }
    let cells: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let indices: Vec<usize> = (0..cells.len()).collect();
    map_ordered(&indices, threads, |&i| {
        let item = cells[i]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("each item is taken once");
        f(item)
    })
}

/// The number of worker threads to use: `configured`, or all cores when it is 0.
pub fn worker_threads(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_input_order() {
        let items: Vec<u64> = (0..100).collect();
        let out = map_ordered(&items, 4, |x| {
            // Uneven work, so threads finish out of order.
            std::thread::sleep(std::time::Duration::from_micros((100 - x) * 10));
            x * 2
        });
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        assert!(map_ordered(&[] as &[u64], 4, |x| *x).is_empty());
        let owned: Vec<String> = (0..50).map(|i| i.to_string()).collect();
        let out = map_owned(owned.clone(), 3, |mut s| {
            s.push('!');
            s
        });
        assert_eq!(
            out,
            owned.iter().map(|s| format!("{s}!")).collect::<Vec<_>>()
        );
    }
}
