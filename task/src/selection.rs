//! Cohort selection with over-selection, and pace steering of everyone else.
//!
//! Sans-IO like the round core: time is passed in, decisions come out. Clients check in; while a
//! round is being assembled the first ⌈clients_per_round × (1 + over_selection)⌉ eligible
//! clients are accepted (Bonawitz et al. 2019 over-select by about 30% so that the expected
//! dropouts still leave the target), and the rest are told to come back later. The retry time
//! spreads the reconnects of a large population over the expected time to the next selection
//! window, with jitter, instead of letting them stampede the coordinator ("pace steering").
//!
//! The members of the last round wait half a selection window before they can be selected
//! again. They check in again the moment their round ends, while everyone turned away is still
//! waiting out its retry time; first come, first served would then select the same clients
//! round after round and train the model on their data only.
//!
//! The coordinator's scheduler and the simulator's check-in model both select through
//! [`Selector`]: [`Selector::check_in`] answers a client, [`Selector::poll`] takes the cohort
//! once it is full or the window has passed with enough clients, and [`Selector::poll_timeout`]
//! says when `poll` may change its answer without another check-in.

use std::time::Duration;

use crate::config::TaskConfig;

/// How a task selects its cohorts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SelectionPolicy {
    /// Clients to accept for one round.
    pub cohort: u32,
    /// Fewest clients a round may start with once the window has passed
    /// ([`TaskConfig::min_cohort`]).
    pub min_clients: u32,
    /// How long to wait for the cohort to fill before starting with what is there.
    pub window: Duration,
}

impl SelectionPolicy {
    /// The policy of `task` (a validated task).
    pub fn for_task(task: &TaskConfig) -> Self {
        let min_clients = task.min_cohort();
        Self {
            cohort: task.selection.selection_size().max(min_clients),
            min_clients,
            window: task.selection.window(),
        }
    }
}

/// What to answer a client that checked in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckInDecision {
    /// Selected for the round being assembled.
    Selected,
    /// Not now: come back after this long.
    ComeBackLater(Duration),
}

/// The scheduler's selection state for one task.
#[derive(Debug)]
pub struct Selector<C> {
    config: SelectionPolicy,
    /// Clients selected for the round being assembled, in check-in order.
    pool: Vec<C>,
    /// When the first client of the current pool checked in.
    window_opened: Option<Duration>,
    /// Whether a round is running (new check-ins wait for the next one).
    busy_until: Option<Duration>,
    /// Recent round length, to steer reconnects.
    round_estimate: Duration,
    /// The last cohort taken: its members wait half a window before they are selected again.
    recent: Vec<C>,
}

impl<C: PartialEq + Clone> Selector<C> {
    /// A selector with an initial round-length estimate.
    pub fn new(config: SelectionPolicy, round_estimate: Duration) -> Self {
        Self {
            config,
            pool: Vec::new(),
            window_opened: None,
            busy_until: None,
            round_estimate,
            recent: Vec::new(),
        }
    }

    /// Clients waiting in the pool.
    pub fn pooled(&self) -> usize {
        self.pool.len()
    }

    /// A client checked in at `now`.
    /// `jitter` is a uniform draw from [0, 1) that spreads retry times (the caller owns the RNG, so
    /// this module stays deterministic).
    pub fn check_in(&mut self, client: C, now: Duration, jitter: f64) -> CheckInDecision {
        if self.busy_until.is_some() || self.pool.len() as u32 >= self.config.cohort {
            return CheckInDecision::ComeBackLater(self.retry_after(now, jitter));
        }
        let opened = *self.window_opened.get_or_insert(now);
        if self.recent.contains(&client) && !self.pool.contains(&client) {
            let grace = self.config.window / 2;
            let waited = now.saturating_sub(opened);
            if waited < grace {
                let wait = (grace - waited).max(Duration::from_millis(100));
                return CheckInDecision::ComeBackLater(
                    wait.mul_f64(1.0 + jitter.clamp(0.0, 1.0) / 2.0),
                );
            }
        }
        if !self.pool.contains(&client) {
            self.pool.push(client);
        }
        CheckInDecision::Selected
    }

    /// A pooled client went away before its round started.
    pub fn leave(&mut self, client: &C) {
        self.pool.retain(|c| c != client);
        if self.pool.is_empty() {
            self.window_opened = None;
        }
    }

    /// Takes the cohort if it is full, or if the window has passed with enough clients.
    pub fn poll(&mut self, now: Duration) -> Option<Vec<C>> {
        if self.busy_until.is_some() {
            return None;
        }
        let full = self.pool.len() as u32 >= self.config.cohort;
        let window_over = self
            .window_opened
            .is_some_and(|t| now.saturating_sub(t) >= self.config.window);
        if full || (window_over && self.pool.len() as u32 >= self.config.min_clients) {
            self.window_opened = None;
            self.busy_until = Some(now + self.round_estimate);
            self.recent = self.pool.clone();
            return Some(std::mem::take(&mut self.pool));
        }
        None
    }

    /// When [`Selector::poll`] may start a round without another check-in: the end of the
    /// selection window, when enough clients wait for it. `None` while a round runs (only
    /// [`Selector::round_finished`] changes that) or while too few clients wait (only a
    /// check-in does).
    pub fn poll_timeout(&self) -> Option<Duration> {
        match (self.busy_until, self.window_opened) {
            (None, Some(opened)) if self.pool.len() as u32 >= self.config.min_clients => {
                Some(opened + self.config.window)
            }
            _ => None,
        }
    }

    /// Whether a round is running (selection is closed).
    pub fn is_busy(&self) -> bool {
        self.busy_until.is_some()
    }

    /// The running round ended after `took`; selection reopens.
    pub fn round_finished(&mut self, took: Duration) {
        self.busy_until = None;
        // An exponential moving average keeps the estimate stable across odd rounds.
        self.round_estimate = (self.round_estimate * 3 + took) / 4;
    }

    /// When a client turned away at `now` should come back: the expected end of the running
    /// round (or the selection window), spread by ±50% jitter.
    fn retry_after(&self, now: Duration, jitter: f64) -> Duration {
        let base = match self.busy_until {
            Some(until) => until.saturating_sub(now).max(Duration::from_secs(1)),
            None => self.config.window.max(Duration::from_secs(1)),
        };
        base.mul_f64(0.5 + jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SelectionPolicy {
        SelectionPolicy {
            cohort: 13,
            min_clients: 5,
            window: Duration::from_secs(30),
        }
    }

    #[test]
    fn over_selects_then_steers_the_rest() {
        let mut s = Selector::new(config(), Duration::from_secs(60));
        let t = Duration::from_secs(5);
        for c in 0..13 {
            assert_eq!(s.check_in(c, t, 0.5), CheckInDecision::Selected);
        }
        let CheckInDecision::ComeBackLater(d) = s.check_in(13, t, 0.5) else {
            panic!("the 14th client must wait");
        };
        assert!(
            d >= Duration::from_secs(15) && d <= Duration::from_secs(45),
            "{d:?}"
        );
        let cohort = s.poll(t).expect("a full pool starts a round");
        assert_eq!(cohort, (0..13).collect::<Vec<_>>());
        // While the round runs, check-ins are steered to its expected end.
        let CheckInDecision::ComeBackLater(d) = s.check_in(20, t + Duration::from_secs(10), 0.5)
        else {
            panic!("busy");
        };
        assert!(
            d >= Duration::from_secs(25) && d <= Duration::from_secs(75),
            "{d:?}"
        );
        s.round_finished(Duration::from_secs(20));
        assert_eq!(s.check_in(20, t, 0.5), CheckInDecision::Selected);
    }

    #[test]
    fn window_starts_a_smaller_round_only_above_the_minimum() {
        let mut s = Selector::new(config(), Duration::from_secs(60));
        for c in 0..4 {
            s.check_in(c, Duration::ZERO, 0.5);
        }
        assert!(s.poll(Duration::from_secs(31)).is_none(), "4 < min_clients");
        s.check_in(4, Duration::from_secs(31), 0.5);
        assert_eq!(s.poll(Duration::from_secs(31)).map(|c| c.len()), Some(5));
    }

    #[test]
    fn last_rounds_members_give_the_others_half_a_window() {
        let mut s = Selector::new(config(), Duration::from_secs(60));
        let t0 = Duration::from_secs(1);
        for c in 0..13 {
            s.check_in(c, t0, 0.5);
        }
        assert_eq!(s.poll(t0).map(|c| c.len()), Some(13));
        s.round_finished(Duration::from_secs(10));
        // The members check in again at once; they are asked to come back after the first
        // half of the window (15 s), spread by up to 50%.
        let t1 = Duration::from_secs(11);
        for c in 0..13 {
            let CheckInDecision::ComeBackLater(d) = s.check_in(c, t1, 0.0) else {
                panic!("member {c} of the last round must wait");
            };
            assert_eq!(d, Duration::from_secs(15));
        }
        // Clients that sat out the last round take the seats meanwhile.
        for c in 100..110 {
            assert_eq!(
                s.check_in(c, t1 + Duration::from_secs(5), 0.5),
                CheckInDecision::Selected
            );
        }
        // After half the window, the last round's members are welcome again.
        let t2 = t1 + Duration::from_secs(15);
        for c in 0..3 {
            assert_eq!(s.check_in(c, t2, 0.5), CheckInDecision::Selected);
        }
        let cohort = s.poll(t2).expect("the pool is full");
        assert_eq!(cohort.len(), 13);
        assert_eq!(cohort.iter().filter(|&&c| c >= 100).count(), 10);
    }

    #[test]
    fn a_population_that_all_took_part_is_selected_again_after_half_a_window() {
        let mut s = Selector::new(config(), Duration::from_secs(60));
        for c in 0..5 {
            s.check_in(c, Duration::ZERO, 0.5);
        }
        assert_eq!(s.poll(Duration::from_secs(30)).map(|c| c.len()), Some(5));
        s.round_finished(Duration::from_secs(1));
        let t = Duration::from_secs(31);
        for c in 0..5 {
            assert!(matches!(
                s.check_in(c, t, 0.9),
                CheckInDecision::ComeBackLater(_)
            ));
        }
        for c in 0..5 {
            assert_eq!(
                s.check_in(c, t + Duration::from_secs(15), 0.5),
                CheckInDecision::Selected
            );
        }
        assert_eq!(
            s.poll(t + Duration::from_secs(30)).map(|c| c.len()),
            Some(5)
        );
    }

    /// `poll_timeout` names the window's end only when enough clients wait for it, so that a
    /// shell that sleeps until it never spins, and `poll` at that time starts the round.
    #[test]
    fn poll_timeout_is_the_window_end_once_the_minimum_waits() {
        let mut s = Selector::new(config(), Duration::from_secs(60));
        assert_eq!(s.poll_timeout(), None);
        let t0 = Duration::from_secs(2);
        for c in 0..4 {
            s.check_in(c, t0 + Duration::from_secs(c), 0.5);
        }
        assert_eq!(
            s.poll_timeout(),
            None,
            "4 < min_clients: only a check-in can help"
        );
        s.check_in(4, t0 + Duration::from_secs(5), 0.5);
        let at = s.poll_timeout().expect("five clients wait");
        assert_eq!(at, t0 + Duration::from_secs(30));
        assert!(s.poll(at - Duration::from_millis(1)).is_none());
        assert_eq!(s.poll(at).map(|c| c.len()), Some(5));
        assert!(s.is_busy());
        assert_eq!(s.poll_timeout(), None, "a running round closes selection");
    }

    #[test]
    fn a_tasks_policy_takes_its_selection_section() {
        let task = crate::config::TaskConfig::from_toml(
            r#"
            id = "t"
            rounds = 1
            [model]
            preset = "digits_mlp"
            [training]
            epochs = 1
            batch_size = 8
            learning_rate = 0.1
            [selection]
            clients_per_round = 20
            over_selection = 0.3
            window_secs = 2.5
            "#,
        )
        .unwrap();
        assert_eq!(
            SelectionPolicy::for_task(&task),
            SelectionPolicy {
                cohort: 26,
                min_clients: 18,
                window: Duration::from_millis(2500),
            }
        );
    }

    #[test]
    fn leaving_and_duplicate_check_ins_keep_the_pool_consistent() {
        let mut s = Selector::new(config(), Duration::from_secs(60));
        s.check_in(1, Duration::ZERO, 0.5);
        s.check_in(1, Duration::ZERO, 0.5);
        assert_eq!(s.pooled(), 1);
        s.leave(&1);
        assert_eq!(s.pooled(), 0);
        assert!(s.poll(Duration::from_secs(100)).is_none());
    }
}
