//! What the embedding program implements: where the examples come from ([`ExampleSource`]),
//! what state the device is in ([`DeviceState`]) and where secrets live ([`SecretStore`]).
//!
//! The edge client calls these from its own threads (the training thread for the examples, the
//! client's runtime for the rest), never re-entrantly, and treats every answer as untrusted
//! input: a source that returns the wrong lengths, NaN or no examples ends the round with an
//! [`ExampleError`], never a panic. The desktop implementations are [`LinuxDevice`] (power,
//! battery, load, low-power and thermal state from `/sys` and `/proc`, a metered network from
//! NetworkManager) and [`FileSecretStore`] (files in the state directory).

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cohort_learning::{ExampleStream, LearningError};

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

/// A desktop's state from Linux ([`eligibility::LinuxReader`]): AC power and battery level
/// from `/sys/class/power_supply` (a machine without a mains supply counts as plugged in),
/// idleness from the load average, low-power mode from the ACPI platform profile, thermal
/// throttling from the thermal zones' trip points, a metered network from NetworkManager.
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
        Ok(eligibility::LinuxReader::system(self.idle_load_fraction).read())
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
        "the example source reports {count} examples, more than the {limit} the client reads in \
         a round; give it a smaller sample"
    )]
    TooMany {
        /// Examples reported.
        count: u64,
        /// The limit, in examples.
        limit: u64,
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

/// The most examples the client reads from one source in a round (the trainer keeps an index
/// per example: 128 MiB at this limit).
pub const MAX_SOURCE_EXAMPLES: u64 = 1 << 24;

/// How many feature values of a source the client keeps in memory at once (64 MiB of `f32`):
/// the batches it read last, evicted least recently used first. A device whose data fits is
/// read once per round; one with more data is read again where training's shuffled order
/// leaves the cache.
pub const SOURCE_CACHE_VALUES: usize = 1 << 24;

/// An [`ExampleSource`] as the trainer's [`ExampleStream`]: examples are read a batch of
/// [`EXAMPLE_BATCH`] at a time when training first needs one of them, checked against the
/// task's input shape and label count, and kept in a bounded cache
/// ([`SOURCE_CACHE_VALUES`]), so the app's data is never copied whole into the client.
///
/// The first failure (the source's own error or a batch that does not fit the task) is kept
/// as a typed [`ExampleError`] ([`take_failure`](Self::take_failure)); training stops with it
/// and nothing is uploaded.
pub struct SourceStream<'a> {
    source: &'a dyn ExampleSource,
    shape: Vec<usize>,
    per_example: usize,
    classes: u32,
    count: u64,
    cache: Mutex<BlockCache>,
    failure: Mutex<Option<ExampleError>>,
}

impl fmt::Debug for SourceStream<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceStream")
            .field("shape", &self.shape)
            .field("classes", &self.classes)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

/// Batches read from a source, by batch number, with the tick of their last use.
#[derive(Default)]
struct BlockCache {
    blocks: HashMap<u64, (Arc<ExampleBatch>, u64)>,
    tick: u64,
    capacity: usize,
    reads: u64,
}

impl<'a> SourceStream<'a> {
    /// Reads `source`'s example count and checks it; the examples are read when training asks.
    pub fn open(
        source: &'a dyn ExampleSource,
        shape: &[usize],
        classes: u32,
    ) -> Result<Self, ExampleError> {
        let per_example: usize = shape.iter().product::<usize>().max(1);
        let count = source.count()?;
        if count == 0 {
            return Err(ExampleError::NoExamples);
        }
        if count > MAX_SOURCE_EXAMPLES {
            return Err(ExampleError::TooMany {
                count,
                limit: MAX_SOURCE_EXAMPLES,
            });
        }
        let batch_values = per_example.saturating_mul(EXAMPLE_BATCH as usize);
        let capacity = (SOURCE_CACHE_VALUES / batch_values).max(2);
        Ok(Self {
            source,
            shape: shape.to_vec(),
            per_example,
            classes,
            count,
            cache: Mutex::new(BlockCache {
                capacity,
                ..BlockCache::default()
            }),
            failure: Mutex::new(None),
        })
    }

    /// The first error met while reading, if any (taken: a second call returns `None`).
    pub fn take_failure(&self) -> Option<ExampleError> {
        lock(&self.failure).take()
    }

    /// How many batches were read from the source so far.
    pub fn batches_read(&self) -> u64 {
        lock(&self.cache).reads
    }

    /// The batch `block` (examples `block × EXAMPLE_BATCH ..`), from the cache or the source.
    fn block(&self, block: u64) -> Result<Arc<ExampleBatch>, ExampleError> {
        {
            let mut cache = lock(&self.cache);
            cache.tick += 1;
            let tick = cache.tick;
            if let Some((batch, used)) = cache.blocks.get_mut(&block) {
                *used = tick;
                return Ok(Arc::clone(batch));
            }
        }
        let start = block * u64::from(EXAMPLE_BATCH);
        let len = (self.count - start).min(u64::from(EXAMPLE_BATCH)) as u32;
        let batch = self.source.batch(start, len)?;
        check_batch(&batch, start, len, self.per_example, self.classes)?;
        let batch = Arc::new(batch);
        let mut cache = lock(&self.cache);
        cache.reads += 1;
        if cache.blocks.len() >= cache.capacity {
            let oldest = cache
                .blocks
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                cache.blocks.remove(&k);
            }
        }
        let tick = cache.tick;
        cache.blocks.insert(block, (Arc::clone(&batch), tick));
        Ok(batch)
    }

    fn fail(&self, e: ExampleError) -> LearningError {
        let message = e.to_string();
        lock(&self.failure).get_or_insert(e);
        LearningError::Data(message)
    }
}

impl ExampleStream for SourceStream<'_> {
    fn len(&self) -> usize {
        // At most MAX_SOURCE_EXAMPLES (checked in `open`).
        self.count as usize
    }

    fn feature_shape(&self) -> &[usize] {
        &self.shape
    }

    fn num_classes(&self) -> u32 {
        self.classes
    }

    fn gather(
        &self,
        positions: &[usize],
        features: &mut Vec<f32>,
        labels: &mut Vec<u32>,
    ) -> Result<(), LearningError> {
        let per_batch = EXAMPLE_BATCH as usize;
        let mut current: Option<(u64, Arc<ExampleBatch>)> = None;
        for &p in positions {
            if p as u64 >= self.count {
                return Err(LearningError::Data(format!(
                    "example {p} asked of a source of {} examples",
                    self.count
                )));
            }
            let block = (p / per_batch) as u64;
            let batch = match &current {
                Some((b, batch)) if *b == block => Arc::clone(batch),
                _ => {
                    let batch = self.block(block).map_err(|e| self.fail(e))?;
                    current = Some((block, Arc::clone(&batch)));
                    batch
                }
            };
            let row = p % per_batch;
            features.extend_from_slice(
                &batch.features[row * self.per_example..(row + 1) * self.per_example],
            );
            labels.push(batch.labels[row]);
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks one batch read from a source against the task: its lengths, finite features and
/// labels below the task's count.
fn check_batch(
    batch: &ExampleBatch,
    start: u64,
    len: u32,
    per_example: usize,
    classes: u32,
) -> Result<(), ExampleError> {
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
    Ok(())
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

    fn gather_all(
        stream: &SourceStream<'_>,
        positions: &[usize],
    ) -> Result<(Vec<f32>, Vec<u32>), LearningError> {
        let (mut f, mut l) = (Vec::new(), Vec::new());
        stream.gather(positions, &mut f, &mut l)?;
        Ok((f, l))
    }

    #[test]
    fn streams_any_order_of_examples_and_checks_each_batch() {
        let n = 600;
        let src = Fixed(
            (0..n * 4).map(|i| i as f32).collect(),
            (0..n as u32).map(|i| i % 3).collect(),
            4,
        );
        let stream = SourceStream::open(&src, &[4], 3).unwrap();
        assert_eq!(ExampleStream::len(&stream), n);
        let positions = [599, 0, 257, 256, 3, 598];
        let (f, l) = gather_all(&stream, &positions).unwrap();
        for (k, &p) in positions.iter().enumerate() {
            let want: Vec<f32> = (p * 4..p * 4 + 4).map(|i| i as f32).collect();
            assert_eq!(&f[k * 4..k * 4 + 4], &want[..], "example {p}");
            assert_eq!(l[k], p as u32 % 3);
        }
        assert_eq!(stream.batches_read(), 3, "each batch of 256 is read once");
        gather_all(&stream, &[1, 2, 300, 512]).unwrap();
        assert_eq!(stream.batches_read(), 3, "cached");

        let narrow = SourceStream::open(&src, &[4], 2).unwrap();
        assert!(gather_all(&narrow, &[1]).is_err());
        assert!(matches!(
            narrow.take_failure(),
            Some(ExampleError::UnknownLabel {
                index: 2,
                label: 2,
                classes: 2
            })
        ));
        assert!(narrow.take_failure().is_none(), "taken");
        let wide = SourceStream::open(&src, &[5], 3).unwrap();
        assert!(gather_all(&wide, &[0]).is_err());
        assert!(matches!(
            wide.take_failure(),
            Some(ExampleError::WrongLength { start: 0, .. })
        ));
        let mut bad = src;
        bad.0[4 * 300 + 1] = f32::NAN;
        let stream = SourceStream::open(&bad, &[4], 3).unwrap();
        assert!(
            gather_all(&stream, &[10]).is_ok(),
            "the bad example's batch is not read"
        );
        assert!(gather_all(&stream, &[260]).is_err());
        assert!(matches!(
            stream.take_failure(),
            Some(ExampleError::NotFinite { index: 300, .. })
        ));
        let empty = Fixed(vec![], vec![], 4);
        assert!(matches!(
            SourceStream::open(&empty, &[4], 3),
            Err(ExampleError::NoExamples)
        ));
    }

    #[test]
    fn memory_stays_within_the_cache_whatever_the_data() {
        // A shape at which the cache holds exactly 2 batches; 5 batches read in turn, twice.
        let per_example = SOURCE_CACHE_VALUES / (2 * EXAMPLE_BATCH as usize);
        struct Lazy(usize);
        impl ExampleSource for Lazy {
            fn count(&self) -> Result<u64, HostError> {
                Ok(5 * u64::from(EXAMPLE_BATCH))
            }
            fn batch(&self, start: u64, len: u32) -> Result<ExampleBatch, HostError> {
                Ok(ExampleBatch {
                    features: vec![start as f32; len as usize * self.0],
                    labels: vec![0; len as usize],
                })
            }
        }
        let src = Lazy(per_example);
        let stream = SourceStream::open(&src, &[per_example], 1).unwrap();
        let b = EXAMPLE_BATCH as usize;
        for round in 0..2 {
            for block in 0..5 {
                gather_all(&stream, &[block * b]).unwrap();
                assert!(lock(&stream.cache).blocks.len() <= 2);
            }
            assert_eq!(stream.batches_read(), 5 * (round + 1));
        }
    }

    #[test]
    fn a_count_too_large_is_refused_before_reading() {
        struct Huge;
        impl ExampleSource for Huge {
            fn count(&self) -> Result<u64, HostError> {
                Ok(u64::MAX)
            }
            fn batch(&self, _: u64, _: u32) -> Result<ExampleBatch, HostError> {
                Err(HostError::new("never read"))
            }
        }
        assert!(matches!(
            SourceStream::open(&Huge, &[784], 10),
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
