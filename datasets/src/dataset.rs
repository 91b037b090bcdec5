//! The in-memory form every loader produces: [`Dataset`] (examples and labels) and [`Split`]
//! (train and test).
//!
//! Two storage layouts share one type so that partitioners, the simulator and the learning
//! crate handle every dataset alike:
//!
//! * [`Features::Dense`]: images and tabular data, row-major `f32`, `len × feature_len`.
//! * [`Features::Windows`]: next-character prediction (Shakespeare). Stored as one shared byte
//!   string of character ids plus the start of each example's window, because materialising
//!   LEAF's overlapping 80-character windows would take about 80 times the text's size
//!   (gigabytes for the 37 plays). Subsets share the text through an [`Arc`].

use std::sync::Arc;

use crate::error::DataError;

/// How a [`Dataset`] stores its examples' inputs.
#[derive(Debug, Clone, PartialEq)]
pub enum Features {
    /// Row-major `f32` values, `len × feature_len`; row `i` is example `i`.
    Dense(Vec<f32>),
    /// Fixed-length windows over a shared token string (see [`TokenWindows`]).
    Windows(TokenWindows),
}

/// Sequence examples as windows over a shared string of token ids.
///
/// Example `i` is `tokens[starts[i] .. starts[i] + seq_len]`; its label (the next token) is held
/// in the dataset's labels like any other label.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenWindows {
    tokens: Arc<[u8]>,
    starts: Vec<u32>,
    seq_len: usize,
}

impl TokenWindows {
    /// Builds windows, checking that every window lies inside `tokens`.
    pub fn new(tokens: Arc<[u8]>, starts: Vec<u32>, seq_len: usize) -> Result<Self, DataError> {
        if let Some(bad) = starts
            .iter()
            .find(|&&s| (s as usize).saturating_add(seq_len) > tokens.len())
        {
            return Err(DataError::Inconsistent {
                detail: format!(
                    "window starting at {bad} of length {seq_len} runs past the end of a token string of {} ids",
                    tokens.len()
                ),
            });
        }
        Ok(TokenWindows {
            tokens,
            starts,
            seq_len,
        })
    }

    /// The shared token string all windows point into.
    pub fn tokens(&self) -> &Arc<[u8]> {
        &self.tokens
    }

    /// The start offset of each example's window in [`Self::tokens`].
    pub fn starts(&self) -> &[u32] {
        &self.starts
    }

    /// The length of every window.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// The token ids of window `i`, if it exists.
    pub fn window(&self, i: usize) -> Option<&[u8]> {
        let start = *self.starts.get(i)? as usize;
        self.tokens.get(start..start + self.seq_len)
    }
}

/// One example's inputs, borrowed from its [`Dataset`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Row<'a> {
    /// Dense `f32` features.
    Dense(&'a [f32]),
    /// Token ids of a sequence window.
    Tokens(&'a [u8]),
}

impl Row<'_> {
    /// The number of values in the row.
    pub fn len(&self) -> usize {
        match self {
            Row::Dense(v) => v.len(),
            Row::Tokens(v) => v.len(),
        }
    }

    /// Whether the row holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The row as `f32` values (token ids convert exactly).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            Row::Dense(v) => v.to_vec(),
            Row::Tokens(v) => v.iter().map(|&t| f32::from(t)).collect(),
        }
    }
}

/// One example: its inputs and its label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Example<'a> {
    /// The inputs.
    pub features: Row<'a>,
    /// The class (or, for sequences, the next token id).
    pub label: u32,
}

/// A labelled dataset held in memory.
///
/// The fields are private so that the invariants (one label per example, labels below
/// `num_classes`, features sized `len × feature_len`) hold for every value of this type.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    features: Features,
    labels: Vec<u32>,
    feature_shape: Vec<usize>,
    num_classes: u32,
}

impl Dataset {
    /// Builds a dense dataset: `features` is row-major, `labels.len() × product(feature_shape)`.
    pub fn from_dense(
        features: Vec<f32>,
        labels: Vec<u32>,
        feature_shape: Vec<usize>,
        num_classes: u32,
    ) -> Result<Self, DataError> {
        let feature_len: usize = feature_shape.iter().product();
        if Some(features.len()) != labels.len().checked_mul(feature_len) {
            return Err(DataError::Inconsistent {
                detail: format!(
                    "{} feature values for {} labels of shape {feature_shape:?}",
                    features.len(),
                    labels.len()
                ),
            });
        }
        Self::check_labels(&labels, num_classes)?;
        Ok(Dataset {
            features: Features::Dense(features),
            labels,
            feature_shape,
            num_classes,
        })
    }

    /// Builds a sequence dataset: one window per label; `num_classes` is the vocabulary size.
    pub fn from_windows(
        windows: TokenWindows,
        labels: Vec<u32>,
        num_classes: u32,
    ) -> Result<Self, DataError> {
        if windows.starts.len() != labels.len() {
            return Err(DataError::Inconsistent {
                detail: format!(
                    "{} windows for {} labels",
                    windows.starts.len(),
                    labels.len()
                ),
            });
        }
        if let Some(&t) = windows
            .tokens
            .iter()
            .find(|&&t| u32::from(t) >= num_classes)
        {
            return Err(DataError::Inconsistent {
                detail: format!("token id {t} is not below the vocabulary size {num_classes}"),
            });
        }
        Self::check_labels(&labels, num_classes)?;
        let feature_shape = vec![windows.seq_len];
        Ok(Dataset {
            features: Features::Windows(windows),
            labels,
            feature_shape,
            num_classes,
        })
    }

    fn check_labels(labels: &[u32], num_classes: u32) -> Result<(), DataError> {
        match labels.iter().position(|&l| l >= num_classes) {
            Some(i) => Err(DataError::Inconsistent {
                detail: format!(
                    "label {} of example {i} is not below num_classes {num_classes}",
                    labels[i]
                ),
            }),
            None => Ok(()),
        }
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the dataset holds no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The shape of one example's inputs, e.g. `[1, 28, 28]` for MNIST or `[80]` for Shakespeare.
    pub fn feature_shape(&self) -> &[usize] {
        &self.feature_shape
    }

    /// The number of values in one example's inputs (product of [`Self::feature_shape`]).
    pub fn feature_len(&self) -> usize {
        self.feature_shape.iter().product()
    }

    /// The number of classes (for sequences: the vocabulary size).
    pub fn num_classes(&self) -> u32 {
        self.num_classes
    }

    /// Every example's label, in order.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The storage of the inputs.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The dense row-major features, or `None` for a sequence dataset.
    pub fn dense_features(&self) -> Option<&[f32]> {
        match &self.features {
            Features::Dense(v) => Some(v),
            Features::Windows(_) => None,
        }
    }

    /// The token windows, or `None` for a dense dataset.
    pub fn token_windows(&self) -> Option<&TokenWindows> {
        match &self.features {
            Features::Dense(_) => None,
            Features::Windows(w) => Some(w),
        }
    }

    /// Example `i`, or `None` when `i >= len()`.
    pub fn example(&self, i: usize) -> Option<Example<'_>> {
        let label = *self.labels.get(i)?;
        let features = match &self.features {
            Features::Dense(v) => {
                let len = self.feature_len();
                Row::Dense(v.get(i * len..(i + 1) * len)?)
            }
            Features::Windows(w) => Row::Tokens(w.window(i)?),
        };
        Some(Example { features, label })
    }

    fn check_indices(&self, indices: &[usize]) -> Result<(), DataError> {
        match indices.iter().find(|&&i| i >= self.len()) {
            Some(&index) => Err(DataError::IndexOutOfRange {
                index,
                len: self.len(),
            }),
            None => Ok(()),
        }
    }

    /// A new dataset holding the examples at `indices`, in that order (repeats allowed).
    /// Sequence subsets share the token string with `self`.
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset, DataError> {
        self.check_indices(indices)?;
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        let features = match &self.features {
            Features::Dense(v) => {
                let len = self.feature_len();
                let mut out = Vec::with_capacity(indices.len() * len);
                for &i in indices {
                    out.extend_from_slice(&v[i * len..(i + 1) * len]);
                }
                Features::Dense(out)
            }
            Features::Windows(w) => Features::Windows(TokenWindows {
                tokens: Arc::clone(&w.tokens),
                starts: indices.iter().map(|&i| w.starts[i]).collect(),
                seq_len: w.seq_len,
            }),
        };
        Ok(Dataset {
            features,
            labels,
            feature_shape: self.feature_shape.clone(),
            num_classes: self.num_classes,
        })
    }

    /// Appends the inputs of the examples at `indices` to `out`, row-major, as `f32` (token ids
    /// convert exactly). This is the batch layout a tensor library wants.
    pub fn gather_features(&self, indices: &[usize], out: &mut Vec<f32>) -> Result<(), DataError> {
        self.check_indices(indices)?;
        let len = self.feature_len();
        out.reserve(indices.len() * len);
        match &self.features {
            Features::Dense(v) => {
                for &i in indices {
                    out.extend_from_slice(&v[i * len..(i + 1) * len]);
                }
            }
            Features::Windows(w) => {
                for &i in indices {
                    let s = w.starts[i] as usize;
                    out.extend(w.tokens[s..s + len].iter().map(|&t| f32::from(t)));
                }
            }
        }
        Ok(())
    }

    /// Appends the labels of the examples at `indices` to `out`.
    pub fn gather_labels(&self, indices: &[usize], out: &mut Vec<u32>) -> Result<(), DataError> {
        self.check_indices(indices)?;
        out.extend(indices.iter().map(|&i| self.labels[i]));
        Ok(())
    }

    /// How many examples carry each label (length `num_classes`).
    pub fn label_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.num_classes as usize];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

/// A dataset's train and test parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Examples to train on (and to partition across clients).
    pub train: Dataset,
    /// Held-out examples for evaluation.
    pub test: Dataset,
}
