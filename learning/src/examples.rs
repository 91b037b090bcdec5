//! The examples a trainer reads: a borrowed view of a [`Dataset`], whole or through a list of
//! indices (one simulated client's share), so that no per-client copy of the data is made; or
//! an [`ExampleStream`] that fetches examples on demand (an app's own data, read a batch at a
//! time instead of copied whole).

use std::fmt;

use cohort_datasets::Dataset;

use crate::error::LearningError;

/// Examples held outside the trainer and read on demand, a batch of positions at a time: the
/// trainer never asks for more than one batch's examples at once, so a stream decides how much
/// it keeps in memory. Training reads the same positions in the same order as it would from a
/// [`Dataset`] of the same examples, so the result is the same.
pub trait ExampleStream: Sync {
    /// How many examples there are (fixed for as long as the stream is read).
    fn len(&self) -> usize;
    /// Whether there are no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The shape of one example's features.
    fn feature_shape(&self) -> &[usize];
    /// A bound on the labels: every label is below it.
    fn num_classes(&self) -> u32;
    /// Appends the features (row-major, one example after another) and the labels of the
    /// examples at `positions` (each below [`len`](Self::len)) to the buffers.
    fn gather(
        &self,
        positions: &[usize],
        features: &mut Vec<f32>,
        labels: &mut Vec<u32>,
    ) -> Result<(), LearningError>;
}

/// A borrowed set of examples: all of a dataset, the examples at `indices`, or a stream.
#[derive(Clone, Copy)]
pub struct Examples<'a> {
    source: Source<'a>,
}

#[derive(Clone, Copy)]
enum Source<'a> {
    Dataset {
        dataset: &'a Dataset,
        indices: Option<&'a [usize]>,
    },
    Stream(&'a dyn ExampleStream),
}

impl fmt::Debug for Examples<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            Source::Dataset { indices, .. } => f
                .debug_struct("Examples")
                .field("len", &self.len())
                .field("subset", &indices.is_some())
                .finish(),
            Source::Stream(_) => f
                .debug_struct("Examples")
                .field("len", &self.len())
                .field("stream", &true)
                .finish(),
        }
    }
}

impl<'a> From<&'a Dataset> for Examples<'a> {
    fn from(dataset: &'a Dataset) -> Self {
        Examples::all(dataset)
    }
}

impl<'a> Examples<'a> {
    /// Every example of `dataset`.
    pub fn all(dataset: &'a Dataset) -> Self {
        Examples {
            source: Source::Dataset {
                dataset,
                indices: None,
            },
        }
    }

    /// The examples of `stream`, read on demand.
    pub fn stream(stream: &'a dyn ExampleStream) -> Self {
        Examples {
            source: Source::Stream(stream),
        }
    }

    /// The examples of `dataset` at `indices` (repeats allowed), e.g. one client's partition.
    pub fn subset(dataset: &'a Dataset, indices: &'a [usize]) -> Result<Self, LearningError> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= dataset.len()) {
            return Err(LearningError::Data(format!(
                "example index {bad} is out of range for a dataset of {} examples; rebuild the partition for this dataset",
                dataset.len()
            )));
        }
        Ok(Examples {
            source: Source::Dataset {
                dataset,
                indices: Some(indices),
            },
        })
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        match self.source {
            Source::Dataset { dataset, indices } => indices.map_or(dataset.len(), <[usize]>::len),
            Source::Stream(s) => s.len(),
        }
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape of one example's features.
    pub fn feature_shape(&self) -> &'a [usize] {
        match self.source {
            Source::Dataset { dataset, .. } => dataset.feature_shape(),
            Source::Stream(s) => s.feature_shape(),
        }
    }

    /// A bound on the labels (the dataset's class count, or the stream's).
    pub fn num_classes(&self) -> u32 {
        match self.source {
            Source::Dataset { dataset, .. } => dataset.num_classes(),
            Source::Stream(s) => s.num_classes(),
        }
    }

    /// Appends the features and labels of the view's examples at `positions` to the buffers.
    pub(crate) fn gather(
        &self,
        positions: &[usize],
        scratch: &mut Vec<usize>,
        features: &mut Vec<f32>,
        labels: &mut Vec<u32>,
    ) -> Result<(), LearningError> {
        match self.source {
            Source::Dataset { dataset, indices } => {
                scratch.clear();
                scratch.extend(positions.iter().map(|&p| indices.map_or(p, |ix| ix[p])));
                dataset
                    .gather_features(scratch, features)
                    .and_then(|()| dataset.gather_labels(scratch, labels))
                    .map_err(|e| LearningError::Data(e.to_string()))
            }
            Source::Stream(s) => {
                let (f0, l0) = (features.len(), labels.len());
                s.gather(positions, features, labels)?;
                let per_example: usize = s.feature_shape().iter().product();
                let (nf, nl) = (features.len() - f0, labels.len() - l0);
                if nf != positions.len() * per_example || nl != positions.len() {
                    return Err(LearningError::Data(format!(
                        "the example stream returned {nf} feature values and {nl} labels for {} examples of {per_example} values",
                        positions.len()
                    )));
                }
                if let Some(&bad) = labels[l0..].iter().find(|&&l| l >= s.num_classes()) {
                    return Err(LearningError::Data(format!(
                        "the example stream returned label {bad}, not below its class count {}",
                        s.num_classes()
                    )));
                }
                Ok(())
            }
        }
    }
}
