//! When a device may train: on AC power, on an unmetered network, idle, above a battery level,
//! never in low-power mode or when thermally throttled, as the owner configures. The reading
//! comes from the host ([`crate::host::DeviceState`]); [`EligibilityPolicy::allows`] decides.
//!
//! On Linux the power state comes from `/sys/class/power_supply/*/online` of the supplies whose
//! `type` is `Mains`; a machine with no such supply (a desktop) counts as on AC power. Idleness
//! is read from the one-minute load average in `/proc/loadavg` against the core count. Where the
//! OS tells nothing, the check passes, so a policy never blocks a machine forever by accident.

use std::path::Path;

use cohort_protocol::DeviceState;

use crate::host::DeviceReading;

/// Why the device may not train now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ineligible {
    /// Not on external power.
    OnBattery,
    /// On a metered network.
    MeteredNetwork,
    /// Someone is using the device.
    Busy,
    /// The battery is below the policy's level.
    LowBattery,
    /// A low-power mode is on.
    LowPowerMode,
    /// The device is thermally throttled.
    Hot,
}

impl std::fmt::Display for Ineligible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ineligible::OnBattery => "not on external power",
            Ineligible::MeteredNetwork => "on a metered network",
            Ineligible::Busy => "the device is in use",
            Ineligible::LowBattery => "the battery is low",
            Ineligible::LowPowerMode => "low-power mode is on",
            Ineligible::Hot => "the device is thermally throttled",
        })
    }
}

/// What the owner requires before the device trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EligibilityPolicy {
    /// Train only on external power.
    pub require_ac_power: bool,
    /// Train only when the machine is idle.
    pub require_idle: bool,
    /// Idle means a one-minute load average below this fraction of the core count.
    pub idle_load_fraction: f64,
    /// Train only on an unmetered network.
    pub require_unmetered: bool,
    /// Train only with at least this battery level (percent; a device without a battery
    /// passes).
    pub min_battery_percent: u8,
}

impl Default for EligibilityPolicy {
    fn default() -> Self {
        Self {
            require_ac_power: true,
            require_idle: false,
            idle_load_fraction: 0.5,
            require_unmetered: false,
            min_battery_percent: 0,
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
            require_unmetered: false,
            min_battery_percent: 0,
        }
    }

    /// The device state as Linux reports it, and whether the policy allows training now.
    pub fn check(&self) -> (DeviceState, bool) {
        let (charging, idle) = linux_power_and_idle(self.idle_load_fraction);
        let state = DeviceState {
            charging,
            unmetered: true,
            idle,
        };
        let ok = (!self.require_ac_power || charging) && (!self.require_idle || idle);
        (state, ok)
    }

    /// Whether the policy allows training in the state `r`; the first reason why not.
    /// Low-power mode and thermal throttling always forbid it.
    pub fn allows(&self, r: &DeviceReading) -> Result<(), Ineligible> {
        if r.low_power {
            return Err(Ineligible::LowPowerMode);
        }
        if r.thermal_throttled {
            return Err(Ineligible::Hot);
        }
        if self.require_ac_power && !r.charging {
            return Err(Ineligible::OnBattery);
        }
        if self.require_unmetered && !r.unmetered {
            return Err(Ineligible::MeteredNetwork);
        }
        if self.require_idle && !r.idle {
            return Err(Ineligible::Busy);
        }
        if r.battery_percent
            .is_some_and(|b| b < self.min_battery_percent)
        {
            return Err(Ineligible::LowBattery);
        }
        Ok(())
    }
}

/// AC power (a machine with no mains supply counts as plugged in) and idleness (load average
/// below `idle_load_fraction` of the cores), as Linux reports them; `true` where it tells
/// nothing.
pub fn linux_power_and_idle(idle_load_fraction: f64) -> (bool, bool) {
    let charging = on_ac_power(Path::new("/sys/class/power_supply")).unwrap_or(true);
    let idle = load_average()
        .map(|l| l < idle_load_fraction * cores() as f64)
        .unwrap_or(true);
    (charging, idle)
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

    #[test]
    fn policy_reads_every_field() {
        let ok = DeviceReading {
            charging: true,
            unmetered: true,
            idle: true,
            battery_percent: Some(80),
            low_power: false,
            thermal_throttled: false,
        };
        let p = EligibilityPolicy {
            require_ac_power: true,
            require_idle: true,
            require_unmetered: true,
            min_battery_percent: 50,
            ..EligibilityPolicy::default()
        };
        assert_eq!(p.allows(&ok), Ok(()));
        let cases = [
            (
                DeviceReading {
                    charging: false,
                    ..ok
                },
                Ineligible::OnBattery,
            ),
            (
                DeviceReading {
                    unmetered: false,
                    ..ok
                },
                Ineligible::MeteredNetwork,
            ),
            (DeviceReading { idle: false, ..ok }, Ineligible::Busy),
            (
                DeviceReading {
                    battery_percent: Some(20),
                    ..ok
                },
                Ineligible::LowBattery,
            ),
            (
                DeviceReading {
                    low_power: true,
                    ..ok
                },
                Ineligible::LowPowerMode,
            ),
            (
                DeviceReading {
                    thermal_throttled: true,
                    ..ok
                },
                Ineligible::Hot,
            ),
        ];
        for (r, why) in cases {
            assert_eq!(p.allows(&r), Err(why), "{r:?}");
        }
        assert_eq!(
            EligibilityPolicy::always().allows(&DeviceReading {
                charging: false,
                idle: false,
                battery_percent: Some(1),
                ..ok
            }),
            Ok(())
        );
    }
}
