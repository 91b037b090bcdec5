//! When a desktop may train: on AC power, idle, or both, as the owner configures.
//!
//! On Linux the power state comes from `/sys/class/power_supply/*/online` of the supplies whose
//! `type` is `Mains`; a machine with no such supply (a desktop) counts as on AC power. Idleness
//! is read from the one-minute load average in `/proc/loadavg` against the core count. Where the
//! OS tells nothing, the check passes, so a policy never blocks a machine forever by accident.

use std::path::Path;

use cohort_protocol::DeviceState;

/// What the owner requires before the device trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EligibilityPolicy {
    /// Train only on external power.
    pub require_ac_power: bool,
    /// Train only when the machine is idle.
    pub require_idle: bool,
    /// Idle means a one-minute load average below this fraction of the core count.
    pub idle_load_fraction: f64,
}

impl Default for EligibilityPolicy {
    fn default() -> Self {
        Self {
            require_ac_power: true,
            require_idle: false,
            idle_load_fraction: 0.5,
        }
    }
}

impl EligibilityPolicy {
    /// A policy that always allows training (tests, servers).
    pub fn always() -> Self {
        Self {
            require_ac_power: false,
            require_idle: false,
            idle_load_fraction: 1.0,
        }
    }

    /// The device state as the OS reports it, and whether the policy allows training now.
    pub fn check(&self) -> (DeviceState, bool) {
        let charging = on_ac_power(Path::new("/sys/class/power_supply")).unwrap_or(true);
        let idle = load_average()
            .map(|l| l < self.idle_load_fraction * cores() as f64)
            .unwrap_or(true);
        let state = DeviceState {
            charging,
            unmetered: true,
            idle,
        };
        let ok = (!self.require_ac_power || charging) && (!self.require_idle || idle);
        (state, ok)
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Whether a mains supply under `dir` is online; `None` when there is no mains supply.
pub fn on_ac_power(dir: &Path) -> Option<bool> {
    let mut seen = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        let kind = std::fs::read_to_string(p.join("type")).unwrap_or_default();
        if kind.trim() != "Mains" {
            continue;
        }
        let online = std::fs::read_to_string(p.join("online")).unwrap_or_default();
        let on = online.trim() == "1";
        seen = Some(seen.unwrap_or(false) || on);
    }
    seen
}

fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mains_supplies_only() {
        let dir = tempfile::tempdir().unwrap();
        let bat = dir.path().join("BAT0");
        std::fs::create_dir_all(&bat).unwrap();
        std::fs::write(bat.join("type"), "Battery\n").unwrap();
        std::fs::write(bat.join("online"), "1\n").unwrap();
        assert_eq!(on_ac_power(dir.path()), None, "no mains supply");
        let ac = dir.path().join("AC");
        std::fs::create_dir_all(&ac).unwrap();
        std::fs::write(ac.join("type"), "Mains\n").unwrap();
        std::fs::write(ac.join("online"), "0\n").unwrap();
        assert_eq!(on_ac_power(dir.path()), Some(false));
        std::fs::write(ac.join("online"), "1\n").unwrap();
        assert_eq!(on_ac_power(dir.path()), Some(true));
    }

    #[test]
    fn always_allows() {
        assert!(EligibilityPolicy::always().check().1);
    }
}
