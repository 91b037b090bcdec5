//! Choosing where tensors run: burn's wgpu backend (any Vulkan, Metal, DirectX or OpenGL
//! adapter) or burn's `flex` CPU backend, decided once at run time and logged.
//!
//! [`BackendChoice::Auto`] takes wgpu when it finds a hardware adapter, and falls back to
//! flex when there is no adapter at all, when the adapter fails a small probe computation, or
//! when the only adapter is a software rasterizer (Mesa's lavapipe or llvmpipe): those run the
//! same kernels about 10 to 20 times slower than flex on the same CPU, so they are only worth
//! choosing explicitly, to test the wgpu path ([`BackendChoice::Wgpu`]).
//!
//! The `COHORT_BACKEND` environment variable (`auto`, `wgpu` or `flex`) overrides the choice a
//! program passes in, so an operator can force a backend without a new build.
//!
//! The wgpu runtime is initialised once per process; later selections reuse it.
//!
//! wgpu is compiled in only with this crate's `wgpu` feature (on by default). Without it, the
//! API is the same: [`BackendChoice::Auto`] picks flex and says why, and
//! [`BackendChoice::Wgpu`] is [`LearningError::WgpuNotBuilt`], which says how to get it.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::error::LearningError;

/// The environment variable that overrides the backend choice: `auto`, `wgpu` or `flex`.
pub const BACKEND_ENV: &str = "COHORT_BACKEND";

/// Which backend a program asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// wgpu on a hardware adapter if there is one, otherwise flex.
    #[default]
    Auto,
    /// wgpu on whatever adapter it finds, software rasterizers included; an error if none, or
    /// if this build has no wgpu ([`LearningError::WgpuNotBuilt`]).
    Wgpu,
    /// burn's flex CPU backend.
    Flex,
}

impl FromStr for BackendChoice {
    type Err = LearningError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(BackendChoice::Auto),
            "wgpu" | "gpu" => Ok(BackendChoice::Wgpu),
            "flex" | "cpu" => Ok(BackendChoice::Flex),
            _ => Err(LearningError::UnknownBackend(s.to_string())),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Wgpu => "wgpu",
            BackendChoice::Flex => "flex",
        })
    }
}

impl BackendChoice {
    /// The choice in `COHORT_BACKEND`, if it is set.
    pub fn from_env() -> Result<Option<BackendChoice>, LearningError> {
        match std::env::var(BACKEND_ENV) {
            Ok(value) => value.parse().map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(value)) => Err(LearningError::UnknownBackend(
                value.to_string_lossy().into_owned(),
            )),
        }
    }
}

/// The backend that actually runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// burn-wgpu.
    Wgpu,
    /// burn-flex, on the CPU.
    Flex,
}

impl BackendKind {
    /// `"wgpu"` or `"flex"`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Wgpu => "wgpu",
            BackendKind::Flex => "flex",
        }
    }
}

/// A resolved backend: the device to build models on, which backend it is, and why it was
/// chosen.
#[derive(Clone, Debug)]
pub struct ComputeBackend {
    device: Device,
    kind: BackendKind,
    adapter: Option<String>,
    reason: String,
}

impl ComputeBackend {
    /// The burn device (without autodiff; trainers add it).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Which backend runs.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The wgpu adapter's name, when wgpu runs.
    pub fn adapter(&self) -> Option<&str> {
        self.adapter.as_deref()
    }

    /// Why this backend was chosen, in a sentence.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The flex CPU backend, without looking for an adapter.
    pub fn flex() -> ComputeBackend {
        ComputeBackend {
            device: Device::flex(),
            kind: BackendKind::Flex,
            adapter: None,
            reason: "the flex CPU backend was asked for".into(),
        }
    }

    /// Resolves `choice`, unless `COHORT_BACKEND` overrides it, and logs the outcome at info
    /// level with the reason.
    pub fn select(choice: BackendChoice) -> Result<ComputeBackend, LearningError> {
        match BackendChoice::from_env()? {
            Some(env) => Self::resolve(env, BACKEND_ENV),
            None => Self::resolve(choice, "the program"),
        }
    }

    /// Resolves `choice` exactly, ignoring `COHORT_BACKEND` (for tests and benchmarks that
    /// compare backends), and logs the outcome like [`select`](Self::select).
    pub fn select_without_env(choice: BackendChoice) -> Result<ComputeBackend, LearningError> {
        Self::resolve(choice, "the program")
    }

    fn resolve(choice: BackendChoice, source: &str) -> Result<ComputeBackend, LearningError> {
        let backend = match choice {
            BackendChoice::Flex => {
                let mut b = ComputeBackend::flex();
                b.reason = format!("flex was asked for by {source}");
                b
            }
            BackendChoice::Wgpu => wgpu_asked_for(source)?,
            BackendChoice::Auto => auto(),
        };
        tracing::info!(
            backend = backend.kind.name(),
            adapter = backend.adapter.as_deref().unwrap_or("-"),
            reason = %backend.reason,
            "compute backend selected"
        );
        Ok(backend)
    }
}

/// wgpu, explicitly asked for by `source`: on whatever adapter it finds, or an error.
#[cfg(feature = "wgpu")]
fn wgpu_asked_for(source: &str) -> Result<ComputeBackend, LearningError> {
    let wgpu = wgpu_runtime::get().map_err(LearningError::WgpuUnavailable)?;
    Ok(ComputeBackend {
        device: wgpu.device.clone(),
        kind: BackendKind::Wgpu,
        adapter: Some(wgpu.adapter.clone()),
        reason: format!(
            "wgpu was asked for by {source}{}",
            if wgpu.software {
                " (a software adapter: slow, for testing the wgpu path)"
            } else {
                ""
            }
        ),
    })
}

/// wgpu, explicitly asked for, in a build without it: a typed error that says how to get it.
#[cfg(not(feature = "wgpu"))]
fn wgpu_asked_for(_source: &str) -> Result<ComputeBackend, LearningError> {
    Err(LearningError::WgpuNotBuilt)
}

/// wgpu on a hardware adapter, otherwise flex, with the reason.
#[cfg(feature = "wgpu")]
fn auto() -> ComputeBackend {
    match wgpu_runtime::get() {
        Ok(wgpu) if !wgpu.software => ComputeBackend {
            device: wgpu.device.clone(),
            kind: BackendKind::Wgpu,
            adapter: Some(wgpu.adapter.clone()),
            reason: "a hardware wgpu adapter was found".into(),
        },
        Ok(wgpu) => ComputeBackend {
            device: Device::flex(),
            kind: BackendKind::Flex,
            adapter: None,
            reason: format!(
                "the only wgpu adapter, {}, is a software rasterizer, which is slower than flex on the same CPU (set {BACKEND_ENV}=wgpu to use it anyway)",
                wgpu.adapter
            ),
        },
        Err(why) => ComputeBackend {
            device: Device::flex(),
            kind: BackendKind::Flex,
            adapter: None,
            reason: format!("no usable wgpu adapter ({why})"),
        },
    }
}

/// flex: the only backend of a build without wgpu.
#[cfg(not(feature = "wgpu"))]
fn auto() -> ComputeBackend {
    ComputeBackend {
        device: Device::flex(),
        kind: BackendKind::Flex,
        adapter: None,
        reason: "built without the wgpu feature".into(),
    }
}

/// The process-wide wgpu runtime: started once, probed, and kept (or its failure kept, so a
/// machine without an adapter is asked once).
#[cfg(feature = "wgpu")]
mod wgpu_runtime {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::OnceLock;

    use burn::tensor::{Device, Tensor, TensorData};

    use crate::error::WgpuStartError;

    /// The started runtime: its device, its adapter's name, and whether that is a software
    /// rasterizer.
    pub(super) struct WgpuRuntime {
        pub(super) device: Device,
        pub(super) adapter: String,
        pub(super) software: bool,
    }

    /// The runtime, started on the first call.
    pub(super) fn get() -> Result<&'static WgpuRuntime, WgpuStartError> {
        static RUNTIME: OnceLock<Result<WgpuRuntime, WgpuStartError>> = OnceLock::new();
        RUNTIME
            .get_or_init(|| {
                // cubecl reports some setup failures by panicking; a panic here means "no usable
                // adapter", not a crash of the program.
                catch_unwind(AssertUnwindSafe(start_wgpu)).unwrap_or(Err(WgpuStartError::Panicked))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    fn start_wgpu() -> Result<WgpuRuntime, WgpuStartError> {
        let device = Device::wgpu_options()
            .init()
            .map_err(|e| WgpuStartError::NoAdapter {
                message: e.to_string(),
            })?;
        let identity = device.identity();
        // The fingerprint names what kernels are compiled for (the graphics API and shader
        // language), which tells Vulkan from OpenGL for the same software rasterizer.
        let adapter = identity
            .as_ref()
            .map(|id| format!("{} [{}]", id.name, id.fingerprint))
            .unwrap_or_else(|| "unknown adapter".into());
        let named_software = ["llvmpipe", "lavapipe", "swiftshader", "software"]
            .iter()
            .any(|s| adapter.to_ascii_lowercase().contains(s));
        let software = named_software || identity.as_ref().is_some_and(|id| id.physical.is_none());
        probe(&device, &adapter)?;
        Ok(WgpuRuntime {
            device,
            adapter,
            software,
        })
    }

    /// Runs a tiny matrix product and checks its result, so that an adapter that starts but
    /// computes nothing (or garbage) is caught here rather than in the middle of training.
    fn probe(device: &Device, adapter: &str) -> Result<(), WgpuStartError> {
        let failed = |message: String| WgpuStartError::ProbeFailed {
            adapter: adapter.to_string(),
            message,
        };
        let a =
            Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]), device);
        let b =
            Tensor::<2>::from_data(TensorData::new(vec![5.0f32, 6.0, 7.0, 8.0], [2, 2]), device);
        let data = a
            .matmul(b)
            .try_into_data()
            .map_err(|e| failed(format!("{e:?}")))?;
        let values = data
            .try_into_vec::<f32>()
            .map_err(|e| failed(format!("{e:?}")))?;
        if values == [19.0, 22.0, 43.0, 50.0] {
            Ok(())
        } else {
            Err(WgpuStartError::WrongResult {
                adapter: adapter.to_string(),
                got: values,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_case_insensitively() {
        assert_eq!(
            "FLEX".parse::<BackendChoice>().unwrap(),
            BackendChoice::Flex
        );
        assert_eq!(
            "wgpu".parse::<BackendChoice>().unwrap(),
            BackendChoice::Wgpu
        );
        assert_eq!(
            " auto ".parse::<BackendChoice>().unwrap(),
            BackendChoice::Auto
        );
        assert!(matches!(
            "cuda".parse::<BackendChoice>(),
            Err(LearningError::UnknownBackend(s)) if s == "cuda"
        ));
    }

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn without_the_wgpu_feature_wgpu_is_a_typed_error_and_auto_is_flex() {
        let err = ComputeBackend::select_without_env(BackendChoice::Wgpu).unwrap_err();
        assert!(matches!(err, LearningError::WgpuNotBuilt), "{err}");
        let message = err.to_string();
        assert!(message.contains("`wgpu` feature"), "{message}");
        assert!(message.contains("flex"), "{message}");

        let auto = ComputeBackend::select_without_env(BackendChoice::Auto).unwrap();
        assert_eq!(auto.kind(), BackendKind::Flex);
        assert_eq!(auto.adapter(), None);
        assert_eq!(auto.reason(), "built without the wgpu feature");
    }
}
