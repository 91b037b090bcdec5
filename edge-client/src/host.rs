//! What the embedding program implements: where the examples come from ([`ExampleSource`]),
//! what state the device is in ([`DeviceState`]) and where secrets live ([`SecretStore`]).
//!
//! The edge client calls these from its own threads (the training thread for the examples, the
//! client's runtime for the rest), never re-entrantly, and treats every answer as untrusted
//! input: a source that returns the wrong lengths, NaN or no examples ends the round with an
//! [`ExampleError`], never a panic. The desktop implementations are [`LinuxDevice`] (AC power
//! and load from `/sys` and `/proc`) and [`FileSecretStore`] (files in the state directory).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::eligibility;

/// An error raised by the host's code (an app's data layer, its Keystore wrapper...). The
/// message is the host's; the edge client passes it on and abandons what it was doing.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{message}")]
pub struct HostError {
    /// What the host said went wrong.
    pub message: String,
}

impl HostError {
    /// A host error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// A batch of examples, row-major: `features.len() == labels.len() × product(input shape)`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExampleBatch {
    /// Feature values, one example after another.
    pub features: Vec<f32>,
    /// One label per example, an index into the task's labels.
    pub labels: Vec<u32>,
}

/// The device's own training data, read in batches so an app need not hand everything over.
pub trait ExampleSource: Send + Sync {
    /// How many examples there are now.
    fn count(&self) -> Result<u64, HostError>;
    /// The examples `start .. start + len` (each `len` at most [`EXAMPLE_BATCH`]).
    fn batch(&self, start: u64, len: u32) -> Result<ExampleBatch, HostError>;
}

/// How many examples the client asks an [`ExampleSource`] for at a time.
pub const EXAMPLE_BATCH: u32 = 256;

/// What the device reports about itself before it checks in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceReading {
    /// On external power.
    pub charging: bool,
    /// On an unmetered network (Wi-Fi, Ethernet).
    pub unmetered: bool,
    /// Nobody is using the device.
    pub idle: bool,
    /// Battery level in percent, when the device has a battery.
    pub battery_percent: Option<u8>,
    /// A low-power or battery-saver mode is on.
    pub low_power: bool,
    /// The device is hot enough that the OS throttles it.
    pub thermal_throttled: bool,
}

impl DeviceReading {
    /// What is sent at check-in (the coordinator sees only these three flags).
    pub fn wire(&self) -> cohort_protocol::DeviceState {
        cohort_protocol::DeviceState {
            charging: self.charging,
            unmetered: self.unmetered,
            idle: self.idle,
        }
    }
}

/// The device's power, network and thermal state, read before every check-in.
pub trait DeviceState: Send + Sync {
    /// The state now.
    fn read(&self) -> Result<DeviceReading, HostError>;
}

/// A desktop's state from Linux: AC power from `/sys/class/power_supply` (a machine without a
/// mains supply counts as plugged in), idleness from the load average. The network always
/// reads as unmetered and there is no low-power or thermal reading.
#[derive(Clone, Debug)]
pub struct LinuxDevice {
    /// Idle means a one-minute load average below this fraction of the core count.
    pub idle_load_fraction: f64,
}

impl Default for LinuxDevice {
    fn default() -> Self {
        Self {
            idle_load_fraction: 0.5,
        }
    }
}

impl DeviceState for LinuxDevice {
    fn read(&self) -> Result<DeviceReading, HostError> {
        let (charging, idle) = eligibility::linux_power_and_idle(self.idle_load_fraction);
        Ok(DeviceReading {
            charging,
            unmetered: true,
            idle,
            battery_percent: None,
            low_power: false,
            thermal_throttled: false,
        })
    }
}

/// Where the credentials (username, Argon2 parameters, pinned certificate, sealed device
/// secret) live: files on a desktop, the Android Keystore or the iOS Keychain on a phone.
pub trait SecretStore: Send + Sync {
    /// The value under `key`, or `None`.
    fn load(&self, key: &str) -> Result<Option<Vec<u8>>, HostError>;
    /// Stores `value` under `key`, replacing what was there.
    fn store(&self, key: &str, value: &[u8]) -> Result<(), HostError>;
    /// Removes `key` (no error when absent).
    fn delete(&self, key: &str) -> Result<(), HostError>;
}

/// Secrets as files of a directory (mode 0600, written atomically): key `credentials.json` is
/// the file that `cohort-edge enroll` writes.
#[derive(Clone)]
pub struct FileSecretStore {
    dir: PathBuf,
}

impl fmt::Debug for FileSecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSecretStore")
            .field("dir", &self.dir)
            .finish()
    }
}

impl FileSecretStore {
    /// A store in `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, HostError> {
        let ok = !key.is_empty()
            && key.len() <= 128
            && !key.starts_with('.')
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(HostError::new(format!(
                "secret key {key:?} is not a plain file name (letters, digits, '.', '_', '-')"
            )));
        }
        Ok(self.dir.join(key))
    }
}

fn io_error(action: &str, path: &Path, e: std::io::Error) -> HostError {
    HostError::new(format!(
        "{action} {}: {e}; check the state directory's permissions",
        path.display()
    ))
}

impl SecretStore for FileSecretStore {
    fn load(&self, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        let path = self.path(key)?;
        match fs::read(&path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("reading", &path, e)),
        }
    }

    fn store(&self, key: &str, value: &[u8]) -> Result<(), HostError> {
        let path = self.path(key)?;
        fs::create_dir_all(&self.dir).map_err(|e| io_error("creating", &self.dir, e))?;
        cohort_net::atomic_file::write_atomically(&path, value, true)
            .map_err(|e| io_error("writing", &path, e))
    }

    fn delete(&self, key: &str) -> Result<(), HostError> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("removing", &path, e)),
        }
    }
}

/// Why the examples an [`ExampleSource`] gave cannot be trained on. The round is abandoned:
/// nothing is uploaded and the coordinator sees a dropout.
#[derive(Debug, Error)]
pub enum ExampleError {
    /// The source raised an error.
    #[error("the example source failed: {0}; fix the app's data layer and try again")]
    Source(#[from] HostError),
    /// The source has no examples.
    #[error("the example source has no examples; add data before taking part")]
    NoExamples,
    /// More examples than the client accepts.
    #[error(
        "the example source reports {count} examples of {values} values each, more than the \
         {limit} values the client accepts; give it a smaller sample"
    )]
    TooMany {
        /// Examples reported.
        count: u64,
        /// Values per example.
        values: usize,
        /// The limit, in values.
        limit: usize,
    },
    /// A batch had the wrong number of values or labels.
    #[error(
        "the batch of examples {start}..{end} has {features} feature values and {labels} labels; \
         expected {expected_features} and {expected_labels} (the task's input has {per_example} \
         values per example)"
    )]
    WrongLength {
        /// First example of the batch.
        start: u64,
        /// One past the last.
        end: u64,
        /// Feature values received.
        features: usize,
        /// Labels received.
        labels: usize,
        /// Feature values expected.
        expected_features: usize,
        /// Labels expected.
        expected_labels: usize,
        /// Values per example.
        per_example: usize,
    },
    /// A feature was NaN or infinite.
    #[error("example {index} has a non-finite feature value ({value}); clean the data first")]
    NotFinite {
        /// The example.
        index: u64,
        /// The value.
        value: f32,
    },
    /// A label outside the task's labels.
    #[error("example {index} has label {label} but the task has {classes} labels")]
    UnknownLabel {
        /// The example.
        index: u64,
        /// The label.
        label: u32,
        /// The task's label count.
        classes: u32,
    },
    /// The device's files do not fit the task (the error names the file).
    #[error(transparent)]
    Files(#[from] crate::local_data::LocalDataError),
    /// The examples do not form a dataset (an internal inconsistency).
    #[error("the examples do not form a dataset: {0}")]
    Dataset(#[from] cohort_datasets::DataError),
}

/// The most feature values the client reads from a source for one round (1 GiB of `f32`).
pub const MAX_SOURCE_VALUES: usize = 1 << 28;

/// Reads every example of `source`, checking each batch against the task's input shape and
/// label count before keeping it.
pub fn read_examples(
    source: &dyn ExampleSource,
    shape: &[usize],
    classes: u32,
) -> Result<cohort_datasets::Dataset, ExampleError> {
    let per_example: usize = shape.iter().product::<usize>().max(1);
    let count = source.count()?;
    if count == 0 {
        return Err(ExampleError::NoExamples);
    }
    let too_many = ExampleError::TooMany {
        count,
        values: per_example,
        limit: MAX_SOURCE_VALUES,
    };
    let total = usize::try_from(count)
        .ok()
        .and_then(|c| c.checked_mul(per_example))
        .filter(|&v| v <= MAX_SOURCE_VALUES);
    let Some(total) = total else {
        return Err(too_many);
    };
    let mut features = Vec::with_capacity(total);
    let mut labels = Vec::with_capacity(count as usize);
    let mut start = 0u64;
    while start < count {
        let len = (count - start).min(u64::from(EXAMPLE_BATCH)) as u32;
        let batch = source.batch(start, len)?;
        let expected_features = len as usize * per_example;
        if batch.features.len() != expected_features || batch.labels.len() != len as usize {
            return Err(ExampleError::WrongLength {
                start,
                end: start + u64::from(len),
                features: batch.features.len(),
                labels: batch.labels.len(),
                expected_features,
                expected_labels: len as usize,
                per_example,
            });
        }
        if let Some(pos) = batch.features.iter().position(|v| !v.is_finite()) {
            return Err(ExampleError::NotFinite {
                index: start + (pos / per_example) as u64,
                value: batch.features[pos],
            });
        }
        if let Some(pos) = batch.labels.iter().position(|&l| l >= classes) {
            return Err(ExampleError::UnknownLabel {
                index: start + pos as u64,
                label: batch.labels[pos],
                classes,
            });
        }
        features.extend_from_slice(&batch.features);
        labels.extend_from_slice(&batch.labels);
        start += u64::from(len);
    }
    Ok(cohort_datasets::Dataset::from_dense(
        features,
        labels,
        shape.to_vec(),
        classes,
    )?)
}

/// A [`cohort_datasets::Dataset`] as an [`ExampleSource`] (dense datasets; token windows are
/// expanded to their ids).
#[derive(Debug)]
pub struct DatasetSource(pub cohort_datasets::Dataset);

impl ExampleSource for DatasetSource {
    fn count(&self) -> Result<u64, HostError> {
        Ok(self.0.len() as u64)
    }

    fn batch(&self, start: u64, len: u32) -> Result<ExampleBatch, HostError> {
        let end = start
            .saturating_add(u64::from(len))
            .min(self.0.len() as u64);
        let indices: Vec<usize> = (start as usize..end as usize).collect();
        let mut batch = ExampleBatch::default();
        self.0
            .gather_features(&indices, &mut batch.features)
            .and_then(|()| self.0.gather_labels(&indices, &mut batch.labels))
            .map_err(|e| HostError::new(e.to_string()))?;
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<f32>, Vec<u32>, usize);

    impl ExampleSource for Fixed {
        fn count(&self) -> Result<u64, HostError> {
            Ok(self.1.len() as u64)
        }
        fn batch(&self, start: u64, len: u32) -> Result<ExampleBatch, HostError> {
            let (s, e) = (start as usize, start as usize + len as usize);
            Ok(ExampleBatch {
                features: self.0[s * self.2..e * self.2].to_vec(),
                labels: self.1[s..e].to_vec(),
            })
        }
    }

    #[test]
    fn reads_all_batches_and_checks_them() {
        let n = 600;
        let src = Fixed(
            (0..n * 4).map(|i| i as f32).collect(),
            (0..n as u32).map(|i| i % 3).collect(),
            4,
        );
        let d = read_examples(&src, &[4], 3).unwrap();
        assert_eq!(d.len(), n);
        assert!(matches!(
            read_examples(&src, &[4], 2),
            Err(ExampleError::UnknownLabel {
                index: 2,
                label: 2,
                classes: 2
            })
        ));
        assert!(matches!(
            read_examples(&src, &[5], 3),
            Err(ExampleError::WrongLength { start: 0, .. })
        ));
        let mut bad = src;
        bad.0[4 * 300 + 1] = f32::NAN;
        assert!(matches!(
            read_examples(&bad, &[4], 3),
            Err(ExampleError::NotFinite { index: 300, .. })
        ));
        let empty = Fixed(vec![], vec![], 4);
        assert!(matches!(
            read_examples(&empty, &[4], 3),
            Err(ExampleError::NoExamples)
        ));
    }

    #[test]
    fn a_count_too_large_is_refused_before_allocating() {
        struct Huge;
        impl ExampleSource for Huge {
            fn count(&self) -> Result<u64, HostError> {
                Ok(u64::MAX)
            }
            fn batch(&self, _: u64, _: u32) -> Result<ExampleBatch, HostError> {
                unreachable!("never read")
            }
        }
        assert!(matches!(
            read_examples(&Huge, &[784], 10),
            Err(ExampleError::TooMany { .. })
        ));
    }

    #[test]
    fn file_store_round_trips_and_refuses_paths() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileSecretStore::new(dir.path().join("state"));
        assert_eq!(s.load("credentials.json").unwrap(), None);
        s.store("credentials.json", b"{}").unwrap();
        assert_eq!(s.load("credentials.json").unwrap(), Some(b"{}".to_vec()));
        s.delete("credentials.json").unwrap();
        s.delete("credentials.json").unwrap();
        assert_eq!(s.load("credentials.json").unwrap(), None);
        assert!(s.load("../etc/passwd").is_err());
        assert!(s.store("", b"x").is_err());
    }
}
