//! Model parameters as one flat `Vec<f32>`, the form weights and updates take on the wire.
//!
//! The layout is the spec's [parameter layout](cohort_protocol::model): layers in spec order,
//! each tensor row-major, in burn's field order (`weight` before `bias`; LSTM gates input,
//! forget, output, cell). [`flatten_params`] reads a module into that layout and
//! [`load_params`] writes one back; the round trip is exact, bit for bit.
//!
//! A model's first weights are drawn on the host by [`ModelSpec::initial_weights`](crate::ModelSpec::initial_weights), so its
//! starting point is the same on every backend, thread and machine.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};

use crate::error::LearningError;
use crate::model::SpecModel;

/// Reads every float parameter of `model`, in layout order, into one vector.
///
/// The parameters are concatenated on the device and read back once, so that a GPU backend
/// synchronises once rather than once per tensor.
pub fn flatten_params(model: &SpecModel) -> Result<Vec<f32>, LearningError> {
    match concat_params(model) {
        Some(flat) => read_vec(flat.detach()),
        None => Ok(Vec::new()),
    }
}

/// Every float parameter of `model`, concatenated in layout order on the device and still
/// attached to the autodiff graph; `None` for a model without parameters.
pub(crate) fn concat_params(model: &SpecModel) -> Option<Tensor<1>> {
    struct Collect(Vec<Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            let n = value.shape().num_elements();
            self.0.push(value.reshape([n]));
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    (!collect.0.is_empty()).then(|| Tensor::cat(collect.0, 0))
}

/// Reads a 1-D tensor back to the host as `f32`.
pub(crate) fn read_vec(tensor: Tensor<1>) -> Result<Vec<f32>, LearningError> {
    let backend_error = |message: String| LearningError::Backend {
        backend: "tensor",
        message,
    };
    tensor
        .try_into_data()
        .map_err(|e| backend_error(format!("{e:?}")))?
        .try_cast_as::<f32>()
        .map_err(|e| backend_error(format!("{e:?}")))?
        .try_into_vec::<f32>()
        .map_err(|e| backend_error(format!("{e:?}")))
}

/// Writes `weights` (in layout order) into `model`'s parameters, keeping each parameter's id,
/// device and gradient setting. Fails, without touching the model, if the length is not the
/// model's parameter count or a value is not finite.
pub fn load_params(model: SpecModel, weights: &[f32]) -> Result<SpecModel, LearningError> {
    check_weights(weights, model.num_params())?;
    Ok(load_unchecked(model, weights))
}

/// Checks a weight vector's length and values before loading it.
pub(crate) fn check_weights(weights: &[f32], expected: usize) -> Result<(), LearningError> {
    if weights.len() != expected {
        return Err(LearningError::ParamLength {
            expected,
            actual: weights.len(),
        });
    }
    if let Some(index) = weights.iter().position(|w| !w.is_finite()) {
        return Err(LearningError::NonFiniteWeight { index });
    }
    Ok(())
}

/// [`load_params`] without the checks; the caller has checked the length.
pub(crate) fn load_unchecked(model: SpecModel, weights: &[f32]) -> SpecModel {
    struct Load<'a> {
        weights: &'a [f32],
        offset: usize,
    }
    impl ModuleMapper for Load<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let shape = param.lazy_shape();
            let n = shape.num_elements();
            let values = self.weights[self.offset..self.offset + n].to_vec();
            self.offset += n;
            let tensor =
                Tensor::<D>::from_data(TensorData::new(values, shape), &param.lazy_device());
            let id = param.id;
            param.transform_for_load(tensor, id)
        }
    }
    model.map(&mut Load { weights, offset: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_vectors_are_refused() {
        assert!(matches!(
            check_weights(&[0.0; 3], 4),
            Err(LearningError::ParamLength {
                expected: 4,
                actual: 3
            })
        ));
        assert!(matches!(
            check_weights(&[0.0, f32::NAN], 2),
            Err(LearningError::NonFiniteWeight { index: 1 })
        ));
    }
}
