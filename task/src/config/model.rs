//! `[model]`: the architecture, as a preset, a ReLU MLP's hidden widths, or a full list of
//! layers, resolved to the protocol's [`ModelSpec`].

use cohort_protocol::{LayerSpec, ModelSpec};
use serde::{Deserialize, Serialize};

use super::error::{ConfigError, invalid};

/// `model.preset`: one of the protocol's named model specs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelPreset {
    /// [`ModelSpec::digits_mlp`]: 64-32-10 ReLU MLP.
    DigitsMlp,
    /// [`ModelSpec::mnist_mlp`]: McMahan et al.'s 784-200-200-10 "2NN".
    MnistMlp,
    /// [`ModelSpec::mnist_cnn`]: a small CNN over `[1, 28, 28]` images, `num_classes` outputs
    /// (default 10).
    MnistCnn,
    /// [`ModelSpec::shakespeare_lstm`]: LEAF's next-character model (an 8-wide embedding, two
    /// LSTMs of 256 units); `input_shape = [window]` and `num_classes` (the vocabulary) come from
    /// the keys or the dataset.
    ShakespeareLstm,
}

/// What a dataset says about a model's ends: features per example and classes. The simulator
/// fills in what `[model]` leaves out from it; the coordinator has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataShape {
    /// Values per example (flattened).
    pub features: u32,
    /// Classes (or, for next-character prediction, the vocabulary).
    pub classes: u32,
}

/// `[model]`: exactly one of `preset`, `hidden` or `layers`, with `input_shape` and
/// `num_classes` where they are not implied.
///
/// - `preset = "digits_mlp"` (or `mnist_mlp`, `mnist_cnn`, `shakespeare_lstm`);
/// - `hidden = [64]`: a ReLU MLP over flat inputs with these hidden widths;
/// - `layers = [{ type = "linear", out = 32 }, { type = "relu" }, ...]`: any sequential model
///   (a [`LayerSpec`] list).
///
/// `input_shape` and `num_classes` are required for `hidden` and `layers` in a task file; the
/// simulator takes them from the dataset when they are absent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A named model spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<ModelPreset>,
    /// Hidden widths of a ReLU MLP (`[200, 200]` is McMahan et al.'s 2NN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<Vec<u32>>,
    /// The layers of a sequential model, in order.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "layers_without_unknown_keys"
    )]
    pub layers: Option<Vec<LayerSpec>>,
    /// The shape of one example, without the batch dimension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_shape: Option<Vec<u32>>,
    /// Output classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<u32>,
}

/// Reads `layers`, refusing unknown keys in every layer. The protocol's [`LayerSpec`] denies
/// unknown fields, but serde cannot for variants without fields (`relu`, `flatten`), so those
/// are checked here: `{ type = "relu", slope = 0.1 }` is an error, not a plain ReLU.
fn layers_without_unknown_keys<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<LayerSpec>>, D::Error> {
    use serde::de::Error as _;
    let raw = Vec::<toml::Table>::deserialize(deserializer)?;
    let mut layers = Vec::with_capacity(raw.len());
    for (index, table) in raw.into_iter().enumerate() {
        let layer = LayerSpec::deserialize(toml::Value::Table(table.clone()))
            .map_err(|e| D::Error::custom(format!("layer {index}: {}", e.message())))?;
        if matches!(layer, LayerSpec::Relu | LayerSpec::Flatten)
            && let Some(extra) = table.keys().find(|k| *k != "type")
        {
            return Err(D::Error::custom(format!(
                "layer {index}: unknown field `{extra}`: a {} layer takes no options",
                layer.kind()
            )));
        }
        layers.push(layer);
    }
    Ok(Some(layers))
}

impl ModelConfig {
    /// A `[model]` that is exactly `spec`.
    pub fn from_spec(spec: &ModelSpec) -> Self {
        Self {
            preset: None,
            hidden: None,
            layers: Some(spec.layers.clone()),
            input_shape: Some(spec.input_shape.clone()),
            num_classes: Some(spec.num_classes),
        }
    }

    /// Checks what can be checked without a dataset: one form, non-zero widths, and, when the
    /// section is complete, the spec itself.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let forms = usize::from(self.preset.is_some())
            + usize::from(self.hidden.is_some())
            + usize::from(self.layers.is_some());
        if forms != 1 {
            return Err(invalid(
                "model",
                if forms == 0 {
                    "none of preset, hidden, layers"
                } else {
                    "more than one of preset, hidden, layers"
                },
                "exactly one of `preset = \"...\"`, `hidden = [...]` or `layers = [...]`",
            ));
        }
        if let Some(hidden) = &self.hidden
            && hidden.contains(&0)
        {
            return Err(invalid(
                "model.hidden",
                format!("{hidden:?}"),
                "a list of layer widths ≥ 1",
            ));
        }
        if self.is_complete() {
            self.resolve(None)?;
        }
        Ok(())
    }

    /// Whether the section fixes the model without a dataset.
    pub fn is_complete(&self) -> bool {
        match self.preset {
            Some(ModelPreset::DigitsMlp | ModelPreset::MnistMlp | ModelPreset::MnistCnn) => true,
            Some(ModelPreset::ShakespeareLstm) | None => {
                self.input_shape.is_some() && self.num_classes.is_some()
            }
        }
    }

    /// The model spec, taking what the section leaves out from `data` (the simulator's
    /// dataset). The spec is validated; a task file (no `data`) must say everything.
    pub fn resolve(&self, data: Option<DataShape>) -> Result<ModelSpec, ConfigError> {
        let classes = |what: &str| {
            self.num_classes.or(data.map(|d| d.classes)).ok_or_else(|| {
                invalid(
                    "model.num_classes",
                    "missing",
                    format!("the number of classes, required with {what} in a task file"),
                )
            })
        };
        let flat_input = |what: &str| -> Result<Vec<u32>, ConfigError> {
            match (&self.input_shape, data) {
                (Some(shape), _) => Ok(shape.clone()),
                (None, Some(d)) => Ok(vec![d.features]),
                (None, None) => Err(invalid(
                    "model.input_shape",
                    "missing",
                    format!("the shape of one example, required with {what} in a task file"),
                )),
            }
        };
        let spec = match (self.preset, &self.hidden, &self.layers) {
            (Some(preset), None, None) => {
                let spec = match preset {
                    ModelPreset::DigitsMlp => ModelSpec::digits_mlp(),
                    ModelPreset::MnistMlp => ModelSpec::mnist_mlp(),
                    ModelPreset::MnistCnn => ModelSpec::mnist_cnn(
                        self.num_classes.or(data.map(|d| d.classes)).unwrap_or(10),
                    ),
                    ModelPreset::ShakespeareLstm => {
                        let window = flat_input("preset = \"shakespeare_lstm\"")?;
                        let [window] = window[..] else {
                            return Err(invalid(
                                "model.input_shape",
                                format!("{window:?}"),
                                "[window] (characters per example) for shakespeare_lstm",
                            ));
                        };
                        ModelSpec::shakespeare_lstm(
                            window,
                            classes("preset = \"shakespeare_lstm\"")?,
                        )
                    }
                };
                for (key, given, fixed) in [
                    (
                        "model.input_shape",
                        self.input_shape.as_ref().map(|s| format!("{s:?}")),
                        format!("{:?}", spec.input_shape),
                    ),
                    (
                        "model.num_classes",
                        self.num_classes.map(|c| c.to_string()),
                        spec.num_classes.to_string(),
                    ),
                ] {
                    if let Some(given) = given
                        && given != fixed
                    {
                        return Err(invalid(
                            key,
                            given,
                            format!("{fixed} (the preset's), or no key"),
                        ));
                    }
                }
                spec
            }
            (None, Some(hidden), None) => {
                let input_shape = flat_input("`hidden`")?;
                if input_shape.len() != 1 {
                    return Err(invalid(
                        "model.input_shape",
                        format!("{input_shape:?}"),
                        "[features]: a `hidden` MLP takes flat examples",
                    ));
                }
                let num_classes = classes("`hidden`")?;
                let mut layers = Vec::with_capacity(2 * hidden.len() + 1);
                for &out in hidden {
                    layers.push(LayerSpec::Linear { out });
                    layers.push(LayerSpec::Relu);
                }
                layers.push(LayerSpec::Linear { out: num_classes });
                ModelSpec {
                    input_shape,
                    layers,
                    num_classes,
                }
            }
            (None, None, Some(layers)) => ModelSpec {
                input_shape: flat_input("`layers`")?,
                layers: layers.clone(),
                num_classes: classes("`layers`")?,
            },
            _ => {
                return Err(invalid(
                    "model",
                    "not exactly one of preset, hidden, layers",
                    "exactly one of `preset = \"...\"`, `hidden = [...]` or `layers = [...]`",
                ));
            }
        };
        spec.validate().map_err(|e| {
            invalid(
                "model",
                e,
                "a valid model (see cohort-protocol's model module for the layers and their shapes)",
            )
        })?;
        if let Some(d) = data {
            let values: u64 = spec.input_shape.iter().map(|&x| u64::from(x)).product();
            if values != u64::from(d.features) {
                return Err(invalid(
                    "model.input_shape",
                    format!("{:?}", spec.input_shape),
                    format!(
                        "a shape of {} values, like the dataset's examples",
                        d.features
                    ),
                ));
            }
            if spec.num_classes < d.classes {
                return Err(invalid(
                    "model.num_classes",
                    spec.num_classes,
                    format!("at least the dataset's {} classes", d.classes),
                ));
            }
        }
        Ok(spec)
    }

    /// The hidden widths when `spec` is a ReLU MLP over flat inputs (`Linear`, `Relu`, ...,
    /// `Linear` to the classes); `None` otherwise.
    pub fn mlp_hidden(spec: &ModelSpec) -> Option<Vec<u32>> {
        if spec.input_shape.len() != 1 {
            return None;
        }
        let (last, body) = spec.layers.split_last()?;
        if *last
            != (LayerSpec::Linear {
                out: spec.num_classes,
            })
            || body.len() % 2 != 0
        {
            return None;
        }
        body.chunks(2)
            .map(|pair| match pair {
                [LayerSpec::Linear { out }, LayerSpec::Relu] => Some(*out),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hidden(h: &[u32]) -> ModelConfig {
        ModelConfig {
            hidden: Some(h.to_vec()),
            ..ModelConfig::default()
        }
    }

    #[test]
    fn each_form_resolves_to_the_same_digits_mlp() {
        let digits = DataShape {
            features: 64,
            classes: 10,
        };
        let preset = ModelConfig {
            preset: Some(ModelPreset::DigitsMlp),
            ..ModelConfig::default()
        };
        let mlp = hidden(&[32]);
        let full = ModelConfig::from_spec(&ModelSpec::digits_mlp());
        for form in [&preset, &full] {
            assert_eq!(form.resolve(None).unwrap(), ModelSpec::digits_mlp());
        }
        for form in [&preset, &mlp, &full] {
            assert_eq!(form.resolve(Some(digits)).unwrap(), ModelSpec::digits_mlp());
        }
        assert_eq!(
            ModelConfig::mlp_hidden(&ModelSpec::digits_mlp()),
            Some(vec![32])
        );
        assert_eq!(ModelConfig::mlp_hidden(&ModelSpec::mnist_cnn(10)), None);
    }

    #[test]
    fn a_task_file_must_say_what_a_dataset_would() {
        let e = hidden(&[32]).resolve(None).unwrap_err();
        assert_eq!(e.key(), Some("model.input_shape"), "{e}");
        let mut m = hidden(&[32]);
        m.input_shape = Some(vec![64]);
        let e = m.resolve(None).unwrap_err();
        assert_eq!(e.key(), Some("model.num_classes"), "{e}");
        m.num_classes = Some(10);
        assert_eq!(m.resolve(None).unwrap(), ModelSpec::digits_mlp());
        assert!(!hidden(&[32]).is_complete() && m.is_complete());
    }

    #[test]
    fn shapes_are_checked_against_the_preset_and_the_dataset() {
        let mut m = ModelConfig {
            preset: Some(ModelPreset::MnistMlp),
            num_classes: Some(62),
            ..ModelConfig::default()
        };
        assert_eq!(
            m.resolve(None).unwrap_err().key(),
            Some("model.num_classes")
        );
        m.num_classes = None;
        let digits = DataShape {
            features: 64,
            classes: 10,
        };
        let e = m.resolve(Some(digits)).unwrap_err();
        assert_eq!(e.key(), Some("model.input_shape"), "{e}");
        let lstm = ModelConfig {
            preset: Some(ModelPreset::ShakespeareLstm),
            ..ModelConfig::default()
        };
        let e = lstm.resolve(None).unwrap_err();
        assert_eq!(e.key(), Some("model.input_shape"), "{e}");
        let spec = lstm
            .resolve(Some(DataShape {
                features: 80,
                classes: 81,
            }))
            .unwrap();
        assert_eq!(spec, ModelSpec::shakespeare_lstm(80, 81));
        let mut two = hidden(&[8]);
        two.preset = Some(ModelPreset::DigitsMlp);
        assert_eq!(two.validate().unwrap_err().key(), Some("model"));
        assert_eq!(
            ModelConfig::default().validate().unwrap_err().key(),
            Some("model")
        );
        assert_eq!(
            hidden(&[8, 0]).validate().unwrap_err().key(),
            Some("model.hidden")
        );
    }
}
