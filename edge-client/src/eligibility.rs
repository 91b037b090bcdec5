//! When a device may train: on AC power, on an unmetered network, idle, above a battery level,
//! never in low-power mode or when thermally throttled, as the owner configures. The reading
//! comes from the host ([`crate::host::DeviceState`]); [`EligibilityPolicy::allows`] decides.
//!
//! A desktop's reading comes from Linux ([`LinuxReader`]), each from files the kernel keeps:
//! - power: `/sys/class/power_supply/*/online` of the supplies whose `type` is `Mains` (a
//!   machine with no such supply, a desktop, counts as on AC power);
//! - battery level: `capacity` of the supplies whose `type` is `Battery` (the lowest of them);
//! - idleness: the one-minute load average in `/proc/loadavg` against the core count;
//! - low-power mode: `/sys/firmware/acpi/platform_profile` reads `low-power`;
//! - thermal throttling: a `/sys/class/thermal/thermal_zone*` at or above its first `passive`
//!   (or `hot`) trip point;
//! - a metered network: NetworkManager's `GENERAL.METERED` for the interface of the default route
//!   (`/proc/net/route`), asked through `nmcli` (a machine without NetworkManager reads as
//!   unmetered).
//!
//! Where the OS tells nothing, the check passes, so a policy never blocks a machine forever by
//! accident.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Reads a Linux machine's state from its `/sys` and `/proc` files (and NetworkManager for a
/// metered network). `root` is `/` on a real machine; tests point it at a directory laid out
/// the same way.
#[derive(Clone, Debug)]
pub struct LinuxReader {
    /// The file-system root under which `sys/` and `proc/` are read.
    pub root: PathBuf,
    /// Idle means a one-minute load average below this fraction of the core count.
    pub idle_load_fraction: f64,
    /// Ask NetworkManager (`nmcli`) whether the default route's network is metered.
    pub ask_network_manager: bool,
}

impl LinuxReader {
    /// The machine's own state.
    pub fn system(idle_load_fraction: f64) -> Self {
        Self {
            root: PathBuf::from("/"),
            idle_load_fraction,
            ask_network_manager: true,
        }
    }

    /// Everything Linux tells about the device now; what it does not tell reads as eligible.
    pub fn read(&self) -> DeviceReading {
        let supplies = self.root.join("sys/class/power_supply");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let metered = self.ask_network_manager
            && default_route_interface(&self.root.join("proc/net/route"))
                .and_then(|iface| network_manager_metered(&iface))
                .unwrap_or(false);
        DeviceReading {
            charging: on_ac_power(&supplies).unwrap_or(true),
            unmetered: !metered,
            idle: load_average(&self.root.join("proc/loadavg"))
                .map(|l| l < self.idle_load_fraction * cores as f64)
                .unwrap_or(true),
            battery_percent: battery_percent(&supplies),
            low_power: low_power_profile(&self.root.join("sys/firmware/acpi/platform_profile")),
            thermal_throttled: thermally_throttled(&self.root.join("sys/class/thermal")),
        }
    }
}

/// The supplies under `dir` (`/sys/class/power_supply`) with their `type` file's value.
fn supplies(dir: &Path) -> impl Iterator<Item = (PathBuf, String)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| {
            let p = entry.path();
            let kind = read_small(&p.join("type")).unwrap_or_default();
            (p, kind)
        })
}

/// A sysfs value: the first line of a small file, trimmed (`None` when unreadable).
fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(4096)
        .read_to_string(&mut text)
        .ok()?;
    Some(text.lines().next().unwrap_or("").trim().to_owned())
}

/// Whether a mains supply under `dir` is online; `None` when there is no mains supply.
pub fn on_ac_power(dir: &Path) -> Option<bool> {
    let mut seen = None;
    for (p, kind) in supplies(dir) {
        if kind != "Mains" {
            continue;
        }
        let on = read_small(&p.join("online")).is_some_and(|v| v == "1");
        seen = Some(seen.unwrap_or(false) || on);
    }
    seen
}

/// The lowest charge of the batteries under `dir`, in percent; `None` without a battery.
pub fn battery_percent(dir: &Path) -> Option<u8> {
    supplies(dir)
        .filter(|(_, kind)| kind == "Battery")
        .filter_map(|(p, _)| read_small(&p.join("capacity"))?.parse::<u8>().ok())
        .map(|c| c.min(100))
        .min()
}

/// Whether the ACPI platform profile (`/sys/firmware/acpi/platform_profile`) is `low-power`.
pub fn low_power_profile(path: &Path) -> bool {
    read_small(path).is_some_and(|p| p == "low-power")
}

/// Whether a thermal zone under `dir` (`/sys/class/thermal`) is at or above its first
/// `passive` or `hot` trip point, where the kernel starts throttling.
pub fn thermally_throttled(dir: &Path) -> bool {
    let zones = std::fs::read_dir(dir).into_iter().flatten().flatten();
    zones
        .map(|z| z.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("thermal_zone"))
        })
        .any(|zone| {
            let Some(temp) = read_small(&zone.join("temp")).and_then(|t| t.parse::<i64>().ok())
            else {
                return false;
            };
            (0..32)
                .map_while(|i| {
                    let kind = read_small(&zone.join(format!("trip_point_{i}_type")))?;
                    let at = read_small(&zone.join(format!("trip_point_{i}_temp")));
                    Some((kind, at.and_then(|t| t.parse::<i64>().ok())))
                })
                .filter(|(kind, _)| kind == "passive" || kind == "hot")
                .filter_map(|(_, at)| at)
                .filter(|at| *at > 0)
                .min()
                .is_some_and(|trip| temp >= trip)
        })
}

/// The interface of the default IPv4 route in `/proc/net/route` (destination and mask 0).
pub fn default_route_interface(route: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(route)
        .ok()?
        .take(1 << 20)
        .read_to_string(&mut text)
        .ok()?;
    text.lines().skip(1).find_map(|line| {
        let mut cols = line.split_whitespace();
        let iface = cols.next()?;
        let destination = cols.next()?;
        let mask = line.split_whitespace().nth(7)?;
        (destination == "00000000" && mask == "00000000").then(|| iface.to_owned())
    })
}

/// NetworkManager's view of whether `iface`'s network is metered; `None` when `nmcli` is
/// missing or says nothing useful.
fn network_manager_metered(iface: &str) -> Option<bool> {
    if iface.is_empty()
        || !iface
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        return None;
    }
    let out = Command::new("nmcli")
        .args(["-t", "-f", "GENERAL.METERED", "device", "show", iface])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_nmcli_metered(&String::from_utf8_lossy(&out.stdout))
}

/// Parses `nmcli -t -f GENERAL.METERED device show IFACE`: `GENERAL.METERED:yes`,
/// `yes (guessed)`, `no`, `no (guessed)` or `unknown`.
pub fn parse_nmcli_metered(output: &str) -> Option<bool> {
    let value = output
        .lines()
        .find_map(|l| l.strip_prefix("GENERAL.METERED:"))?
        .trim();
    if value.starts_with("yes") {
        Some(true)
    } else if value.starts_with("no") {
        Some(false)
    } else {
        None
    }
}

fn load_average(path: &Path) -> Option<f64> {
    read_small(path)?.split_whitespace().next()?.parse().ok()
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

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn reads_a_laptop_on_battery_that_is_hot_and_saving_power() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(&r.join("sys/class/power_supply/AC/type"), "Mains\n");
        write(&r.join("sys/class/power_supply/AC/online"), "0\n");
        write(&r.join("sys/class/power_supply/BAT0/type"), "Battery\n");
        write(&r.join("sys/class/power_supply/BAT0/capacity"), "42\n");
        write(&r.join("sys/class/power_supply/BAT1/type"), "Battery\n");
        write(&r.join("sys/class/power_supply/BAT1/capacity"), "97\n");
        write(&r.join("proc/loadavg"), "0.00 0.01 0.05 1/123 4567\n");
        write(&r.join("sys/firmware/acpi/platform_profile"), "low-power\n");
        let zone = r.join("sys/class/thermal/thermal_zone0");
        write(&zone.join("temp"), "91000\n");
        write(&zone.join("trip_point_0_type"), "critical\n");
        write(&zone.join("trip_point_0_temp"), "105000\n");
        write(&zone.join("trip_point_1_type"), "passive\n");
        write(&zone.join("trip_point_1_temp"), "90000\n");
        let reader = LinuxReader {
            root: r.to_path_buf(),
            idle_load_fraction: 0.5,
            ask_network_manager: false,
        };
        assert_eq!(
            reader.read(),
            DeviceReading {
                charging: false,
                unmetered: true,
                idle: true,
                battery_percent: Some(42),
                low_power: true,
                thermal_throttled: true,
            }
        );
        write(&zone.join("temp"), "60000\n");
        write(&r.join("sys/firmware/acpi/platform_profile"), "balanced\n");
        let cool = reader.read();
        assert!(!cool.thermal_throttled && !cool.low_power, "{cool:?}");
    }

    #[test]
    fn a_machine_that_tells_nothing_reads_as_eligible() {
        let root = tempfile::tempdir().unwrap();
        let reading = LinuxReader {
            root: root.path().to_path_buf(),
            idle_load_fraction: 0.5,
            ask_network_manager: false,
        }
        .read();
        assert_eq!(
            reading,
            DeviceReading {
                charging: true,
                unmetered: true,
                idle: true,
                battery_percent: None,
                low_power: false,
                thermal_throttled: false,
            }
        );
        assert_eq!(EligibilityPolicy::default().allows(&reading), Ok(()));
    }

    #[test]
    fn garbage_files_never_panic_and_read_as_unknown() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(&r.join("sys/class/power_supply/BAT0/type"), "Battery\n");
        write(&r.join("sys/class/power_supply/BAT0/capacity"), "-7\n");
        write(&r.join("proc/loadavg"), "\u{0}\u{ff}garbage");
        write(&r.join("sys/class/thermal/thermal_zone0/temp"), "hot\n");
        write(&r.join("proc/net/route"), "Iface\n\n   \nx");
        let reader = LinuxReader {
            root: r.to_path_buf(),
            idle_load_fraction: 0.5,
            ask_network_manager: false,
        };
        let reading = reader.read();
        assert_eq!(reading.battery_percent, None);
        assert!(reading.idle && !reading.thermal_throttled);
        assert_eq!(default_route_interface(&r.join("proc/net/route")), None);
    }

    #[test]
    fn finds_the_default_route_and_reads_network_manager() {
        let root = tempfile::tempdir().unwrap();
        let route = root.path().join("route");
        write(
            &route,
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             wlp2s0\t0010A8C0\t00000000\t0001\t0\t0\t600\t00FFFFFF\t0\t0\t0\n\
             wlp2s0\t00000000\t0100A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n",
        );
        assert_eq!(default_route_interface(&route).as_deref(), Some("wlp2s0"));
        assert_eq!(parse_nmcli_metered("GENERAL.METERED:yes\n"), Some(true));
        assert_eq!(
            parse_nmcli_metered("GENERAL.METERED:yes (guessed)\n"),
            Some(true)
        );
        assert_eq!(
            parse_nmcli_metered("GENERAL.METERED:no (guessed)\n"),
            Some(false)
        );
        assert_eq!(parse_nmcli_metered("GENERAL.METERED:unknown\n"), None);
        assert_eq!(parse_nmcli_metered(""), None);
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
