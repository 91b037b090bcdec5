//! [`StrategyConfig`]: the serde form in which a deployment names its server optimizer and
//! hyper-parameters (e.g. a `[strategy]` table of the coordinator's TOML configuration).

use serde::{Deserialize, Serialize};

use super::{FedAvg, FedAvgM, FedOpt, Strategy, StrategyError};

/// A server optimizer and its hyper-parameters. Serialised with a `kind` tag, e.g.
/// `{ kind = "fed_adam", eta = 0.05 }`; omitted hyper-parameters take the defaults below, and
/// unknown fields are refused (so a misspelt `betta1` is an error, not silently the default).
///
/// Defaults follow Flower's strategies (themselves after Reddi et al. 2021), except FedAvgM's
/// momentum, which follows Hsu et al. (2019).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StrategyConfig {
    /// FedAvg: x ← x + server_lr·Δ.
    #[serde(alias = "fedavg")]
    FedAvg {
        /// Server learning rate; default 1.0 (the new model is the clients' weighted mean).
        #[serde(default = "one")]
        server_lr: f32,
    },
    /// FedAvgM: v ← momentum·v + Δ; x ← x + server_lr·v.
    #[serde(alias = "fedavgm")]
    FedAvgM {
        /// Server learning rate; default 1.0.
        #[serde(default = "one")]
        server_lr: f32,
        /// Server momentum β in [0, 1); default 0.9 (Hsu et al. 2019; Flower's 0.0 would make
        /// this plain FedAvg).
        #[serde(default = "fedavgm_momentum")]
        momentum: f32,
    },
    /// FedAdam (Reddi et al. 2021).
    #[serde(alias = "fedadam")]
    FedAdam {
        /// Server learning rate η; default 0.1.
        #[serde(default = "tenth")]
        eta: f32,
        /// First-moment decay β1 in [0, 1); default 0.9.
        #[serde(default = "beta1")]
        beta1: f32,
        /// Second-moment decay β2 in [0, 1); default 0.99.
        #[serde(default = "beta2")]
        beta2: f32,
        /// Adaptivity τ > 0; default 1e-9.
        #[serde(default = "tiny_tau")]
        tau: f32,
    },
    /// FedYogi (Reddi et al. 2021).
    #[serde(alias = "fedyogi")]
    FedYogi {
        /// Server learning rate η; default 0.01.
        #[serde(default = "hundredth")]
        eta: f32,
        /// First-moment decay β1 in [0, 1); default 0.9.
        #[serde(default = "beta1")]
        beta1: f32,
        /// Second-moment decay β2 in [0, 1); default 0.99.
        #[serde(default = "beta2")]
        beta2: f32,
        /// Adaptivity τ > 0; default 1e-3.
        #[serde(default = "yogi_tau")]
        tau: f32,
    },
    /// FedAdagrad (Reddi et al. 2021).
    #[serde(alias = "fedadagrad")]
    FedAdagrad {
        /// Server learning rate η; default 0.1.
        #[serde(default = "tenth")]
        eta: f32,
        /// First-moment decay β1 in [0, 1); default 0.0 (no momentum, as in Flower; the paper
        /// allows momentum here too).
        #[serde(default)]
        beta1: f32,
        /// Adaptivity τ > 0; default 1e-9.
        #[serde(default = "tiny_tau")]
        tau: f32,
    },
}

impl Default for StrategyConfig {
    /// Plain FedAvg with server learning rate 1.
    fn default() -> Self {
        Self::FedAvg { server_lr: one() }
    }
}

impl StrategyConfig {
    /// The strategy's name (the `kind` tag), e.g. `"fed_adam"`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::FedAvg { .. } => FedAvg::NAME,
            Self::FedAvgM { .. } => FedAvgM::NAME,
            Self::FedAdam { .. } => FedOpt::ADAM,
            Self::FedYogi { .. } => FedOpt::YOGI,
            Self::FedAdagrad { .. } => FedOpt::ADAGRAD,
        }
    }

    /// Validates the hyper-parameters and builds the strategy, with fresh state. Errors name
    /// the offending parameter.
    pub fn build(&self) -> Result<Box<dyn Strategy>, StrategyError> {
        Ok(match *self {
            Self::FedAvg { server_lr } => Box::new(FedAvg::new(server_lr)?),
            Self::FedAvgM {
                server_lr,
                momentum,
            } => Box::new(FedAvgM::new(server_lr, momentum)?),
            Self::FedAdam {
                eta,
                beta1,
                beta2,
                tau,
            } => Box::new(FedOpt::adam(eta, beta1, beta2, tau)?),
            Self::FedYogi {
                eta,
                beta1,
                beta2,
                tau,
            } => Box::new(FedOpt::yogi(eta, beta1, beta2, tau)?),
            Self::FedAdagrad { eta, beta1, tau } => Box::new(FedOpt::adagrad(eta, beta1, tau)?),
        })
    }
}

fn one() -> f32 {
    1.0
}

fn tenth() -> f32 {
    0.1
}

fn hundredth() -> f32 {
    0.01
}

fn fedavgm_momentum() -> f32 {
    0.9
}

fn beta1() -> f32 {
    0.9
}

fn beta2() -> f32 {
    0.99
}

fn tiny_tau() -> f32 {
    1e-9
}

fn yogi_tau() -> f32 {
    1e-3
}
