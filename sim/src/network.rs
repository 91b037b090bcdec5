//! The virtual network and device model: named profiles with bandwidth, latency and compute
//! speed, and the time a transfer or a training run takes on one.
//!
//! Each client draws one profile at the start of the run (weighted, from a seeded RNG) and
//! keeps it. A transfer from or to a client takes `latency + bytes / bandwidth` in that
//! direction, and a client's link carries one message at a time (its sends queue behind each
//! other). The server's own link is not modelled: a datacenter uplink is rarely the bottleneck
//! of a federated round, and modelling it would couple every client's timing to every other's.

use rand::Rng;

/// A kind of device: its link and its training speed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceProfile {
    /// The name used in experiment files.
    pub name: &'static str,
    /// Uplink, bytes per second.
    pub up_bytes_per_s: f64,
    /// Downlink, bytes per second.
    pub down_bytes_per_s: f64,
    /// One-way latency, seconds.
    pub latency_s: f64,
    /// Training throughput: examples processed (forward and backward) per second, for a model
    /// of [`REFERENCE_PARAMS`] parameters; scaled linearly with model size.
    pub examples_per_s: f64,
}

/// The model size at which [`DeviceProfile::examples_per_s`] is quoted (about a 784-200-200-10
/// MLP).
pub const REFERENCE_PARAMS: f64 = 200_000.0;

impl DeviceProfile {
    /// Every profile, in documentation order.
    pub const ALL: [DeviceProfile; 4] = [
        DeviceProfile {
            name: "phone-4g",
            up_bytes_per_s: 1.0e6 / 8.0 * 5.0,
            down_bytes_per_s: 1.0e6 / 8.0 * 20.0,
            latency_s: 0.060,
            examples_per_s: 500.0,
        },
        DeviceProfile {
            name: "phone-wifi",
            up_bytes_per_s: 1.0e6 / 8.0 * 20.0,
            down_bytes_per_s: 1.0e6 / 8.0 * 50.0,
            latency_s: 0.020,
            examples_per_s: 500.0,
        },
        DeviceProfile {
            name: "laptop",
            up_bytes_per_s: 1.0e6 / 8.0 * 50.0,
            down_bytes_per_s: 1.0e6 / 8.0 * 100.0,
            latency_s: 0.015,
            examples_per_s: 3_000.0,
        },
        DeviceProfile {
            name: "datacenter",
            up_bytes_per_s: 1.0e9 / 8.0,
            down_bytes_per_s: 1.0e9 / 8.0,
            latency_s: 0.001,
            examples_per_s: 20_000.0,
        },
    ];

    /// The profile called `name` (`_` is read as `-`).
    pub fn named(name: &str) -> Option<&'static DeviceProfile> {
        let wanted = name.replace('_', "-");
        Self::ALL.iter().find(|p| p.name == wanted)
    }

    /// Seconds to send `bytes` from the client to the server.
    pub fn upload_s(&self, bytes: u64) -> f64 {
        self.latency_s + bytes as f64 / self.up_bytes_per_s
    }

    /// Seconds to send `bytes` from the server to the client.
    pub fn download_s(&self, bytes: u64) -> f64 {
        self.latency_s + bytes as f64 / self.down_bytes_per_s
    }

    /// Seconds of local training over `examples` examples (all epochs) of a model with
    /// `params` parameters.
    pub fn training_s(&self, examples: u64, params: usize) -> f64 {
        let scale = (params as f64 / REFERENCE_PARAMS).max(0.01);
        examples as f64 * scale / self.examples_per_s
    }
}

/// The profile mix of an experiment, ready to draw from.
#[derive(Clone, Debug)]
pub struct ProfileMix {
    profiles: Vec<&'static DeviceProfile>,
    cumulative: Vec<f64>,
}

impl ProfileMix {
    /// Builds the mix from `(name, weight)` pairs (names already validated).
    pub fn new<'a>(weights: impl IntoIterator<Item = (&'a String, &'a f64)>) -> Self {
        let mut profiles = Vec::new();
        let mut cumulative = Vec::new();
        let mut total = 0.0;
        for (name, w) in weights {
            if let Some(p) = DeviceProfile::named(name)
                && *w > 0.0
            {
                total += *w;
                profiles.push(p);
                cumulative.push(total);
            }
        }
        for c in &mut cumulative {
            *c /= total;
        }
        Self {
            profiles,
            cumulative,
        }
    }

    /// Draws one profile index.
    pub fn draw<R: Rng>(&self, rng: &mut R) -> u8 {
        let x: f64 = rng.random();
        let i = self.cumulative.iter().position(|&c| x < c);
        i.unwrap_or(self.profiles.len() - 1) as u8
    }

    /// The profile at `index` (as returned by [`Self::draw`]).
    pub fn get(&self, index: u8) -> &'static DeviceProfile {
        self.profiles[index as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_time_is_latency_plus_size_over_bandwidth() {
        let p = DeviceProfile::named("datacenter").unwrap();
        // 125 MB at 125 MB/s is one second, plus 1 ms.
        assert!((p.upload_s(125_000_000) - 1.001).abs() < 1e-9);
        assert!(DeviceProfile::named("phone_4g").is_some());
        assert!(DeviceProfile::named("modem").is_none());
    }
}
