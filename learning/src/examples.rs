//! The examples a trainer reads: a borrowed view of a [`Dataset`], whole or through a list of
//! indices (one simulated client's share), so that no per-client copy of the data is made.

use cohort_datasets::Dataset;

use crate::error::LearningError;

/// A borrowed set of examples: all of a dataset, or the examples at `indices`.
#[derive(Clone, Copy, Debug)]
pub struct Examples<'a> {
    dataset: &'a Dataset,
    indices: Option<&'a [usize]>,
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
            dataset,
            indices: None,
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
            dataset,
            indices: Some(indices),
        })
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        self.indices.map_or(self.dataset.len(), <[usize]>::len)
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The underlying dataset.
    pub fn dataset(&self) -> &'a Dataset {
        self.dataset
    }

    /// The dataset index of the `position`-th example of this view.
    pub(crate) fn dataset_index(&self, position: usize) -> usize {
        self.indices.map_or(position, |ix| ix[position])
    }

    /// Appends the features and labels of the view's examples at `positions` to the buffers.
    pub(crate) fn gather(
        &self,
        positions: &[usize],
        scratch: &mut Vec<usize>,
        features: &mut Vec<f32>,
        labels: &mut Vec<u32>,
    ) -> Result<(), LearningError> {
        scratch.clear();
        scratch.extend(positions.iter().map(|&p| self.dataset_index(p)));
        self.dataset
            .gather_features(scratch, features)
            .and_then(|()| self.dataset.gather_labels(scratch, labels))
            .map_err(|e| LearningError::Data(e.to_string()))
    }
}
