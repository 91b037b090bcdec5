//! One **insecure** plaintext round attempt on the virtual clock, for comparison with SecAgg+:
//! the server sends the model, each member trains and uploads its clipped update in the clear,
//! and the server averages what arrived before the deadline with
//! [`InsecurePlainAggregator`].
//!
//! The deadline is the sum of the SecAgg+ phase deadlines, so that a member that would make it
//! in time under SecAgg+ makes it here too. Dropouts at R0 and R1 happen before training, at R2
//! before the upload; R3 has no counterpart. The round aborts below the same quorum as SecAgg+.
//!
//! With over-selection (`target` below the cohort's size) the server averages the first
//! `target` updates to arrive and tells the others to stop: they are counted in
//! [`AttemptOutcome::stopped`], and the bytes of an upload that had not started when the stop
//! reached its sender are not counted.

use cohort_aggregation::plain::InsecurePlainAggregator;

use crate::attempt::{AttemptOutcome, Links, Member, VECTOR_OVERHEAD_BYTES, model_bytes};
use crate::clock::{EventQueue, Micros, micros};
use crate::cohort::DropPhase;

enum Event {
    Upload(usize),
    Disconnected,
    Deadline,
}

/// Runs one plaintext attempt: `deadline_s` after the start the server stops waiting, and it
/// stops as soon as `target` updates are in; fewer than `quorum` updates abort the attempt.
pub fn run(
    members: &[Member],
    num_params: usize,
    deadline_s: f64,
    quorum: usize,
    target: usize,
) -> AttemptOutcome {
    let n = members.len();
    let mut outcome = AttemptOutcome::default();
    let mut queue: EventQueue<Event> = EventQueue::new(0);
    let mut links = Links::new(n);
    let down = model_bytes(num_params);
    let up = 4 * (num_params as u64 + 1) + VECTOR_OVERHEAD_BYTES;
    // Per uploader: when its upload starts.
    let mut upload_start: Vec<Option<Micros>> = vec![None; n];
    for (p, m) in members.iter().enumerate() {
        let fetched = links.download(p, m.profile, 0, down);
        let dies = m
            .fate
            .drop_at
            .filter(|d| !matches!(d, DropPhase::ConsistencyCheck | DropPhase::Unmask));
        match dies {
            Some(phase @ (DropPhase::AdvertiseKeys | DropPhase::ShareKeys)) => {
                outcome.count_drop(phase);
                if m.fate.disconnect {
                    queue.at(fetched, Event::Disconnected);
                }
            }
            Some(phase) => {
                outcome.count_drop(phase);
                if m.fate.disconnect {
                    queue.at(fetched + micros(m.training_s), Event::Disconnected);
                }
            }
            None if m.update.is_some() => {
                let trained = fetched + micros(m.training_s);
                upload_start[p] = Some(trained);
                let arrives = links.upload(p, m.profile, trained, up);
                queue.at(arrives, Event::Upload(p));
            }
            None => {}
        }
    }
    queue.at(micros(deadline_s), Event::Deadline);
    let mut disconnected = 0usize;
    let mut arrived: Vec<usize> = Vec::new();
    let mut end: Micros = 0;
    while let Some(event) = queue.pop() {
        match event {
            Event::Upload(p) => {
                arrived.push(p);
            }
            Event::Disconnected => disconnected += 1,
            Event::Deadline => {
                end = queue.now();
                break;
            }
        }
        // Everyone has answered or left: no reason to wait for the deadline. (A silent crash
        // keeps the server waiting until the deadline, as it would in production.)
        if arrived.len() + disconnected == n {
            end = queue.now();
            break;
        }
        if target < n && arrived.len() == target {
            // Over-selection: enough updates; the others are told to stop.
            end = queue.now();
            for (p, start) in upload_start.iter().enumerate() {
                let Some(start) = *start else { continue };
                if arrived.contains(&p) {
                    continue;
                }
                outcome.stopped += 1;
                let told = end + micros(members[p].profile.latency_s);
                if start >= told {
                    // It heard the stop before it began uploading.
                    links.bytes_up -= up;
                }
            }
            break;
        }
    }
    outcome.duration = end;
    outcome.bytes_up = links.bytes_up;
    outcome.bytes_down = links.bytes_down;
    if arrived.len() < quorum {
        outcome.abort_reason = Some(format!(
            "{} update(s) arrived, the quorum is {quorum}",
            arrived.len()
        ));
        return outcome;
    }
    // Sum in cohort order, whatever the arrival order, so the result is reproducible to the bit.
    arrived.sort_unstable();
    let mut agg = InsecurePlainAggregator::new(num_params);
    let mut loss = 0.0f64;
    let mut weight = 0.0f64;
    for &p in &arrived {
        let Some(u) = &members[p].update else {
            continue;
        };
        if let Err(e) = agg.add(&u.plain, u.weight) {
            tracing::warn!(client = p, error = %e, "update refused");
            outcome.removed += 1;
            continue;
        }
        loss += f64::from(u.loss) * u.examples as f64;
        weight += u.examples as f64;
    }
    outcome.participants = agg.count();
    if weight > 0.0 {
        outcome.train_loss = Some((loss / weight) as f32);
    }
    match agg.finish() {
        Ok(d) => outcome.mean = Some(d.mean),
        Err(e) => outcome.abort_reason = Some(e.to_string()),
    }
    outcome
}
