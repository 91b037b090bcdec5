//! Server strategies: hand-computed steps for each optimizer, input and state checks, and the
//! serde form of `StrategyConfig`.

use std::collections::BTreeMap;

use cohort_aggregation::strategy::{
    FedAvg, FedAvgM, FedOpt, Strategy, StrategyConfig, StrategyError, StrategyState,
};

/// Asserts that two vectors agree to within `1e-6` relative (f32 arithmetic against values
/// worked out in exact decimal arithmetic).
#[track_caller]
fn assert_close(got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "length of {got:?} vs {want:?}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-6 * w.abs().max(1.0);
        assert!(
            (f64::from(g) - w).abs() <= tol,
            "coordinate {i}: got {g}, want {w} (all: {got:?})"
        );
    }
}

fn all_configs() -> Vec<StrategyConfig> {
    [
        "fed_avg",
        "fed_avg_m",
        "fed_adam",
        "fed_yogi",
        "fed_adagrad",
    ]
    .iter()
    .map(|kind| serde_json::from_str(&format!(r#"{{"kind":"{kind}"}}"#)).unwrap())
    .collect()
}

#[test]
fn fedavg_adds_the_scaled_mean_update() {
    let mut s = FedAvg::new(0.5).unwrap();
    let mut x = [1.0, -2.0];
    // x = [1, -2] + 0.5·[0.2, 0.4] = [1.1, -1.8]
    s.apply(&mut x, &[0.2, 0.4]).unwrap();
    assert_close(&x, &[1.1, -1.8]);
    // x = [1.1, -1.8] + 0.5·[-0.2, 0] = [1.0, -1.8]
    s.apply(&mut x, &[-0.2, 0.0]).unwrap();
    assert_close(&x, &[1.0, -1.8]);
    assert_eq!(s.export_state().steps, 2);
}

#[test]
fn fedavgm_accumulates_velocity() {
    let mut s = FedAvgM::new(1.0, 0.9).unwrap();
    let mut x = [0.0, 10.0];
    // v = 0.9·0 + 1 = 1;           x = 0 + 1 = 1
    s.apply(&mut x, &[1.0, 0.0]).unwrap();
    assert_close(&x, &[1.0, 10.0]);
    // v = 0.9·1 + 1 = 1.9;         x = 1 + 1.9 = 2.9
    s.apply(&mut x, &[1.0, 0.0]).unwrap();
    assert_close(&x, &[2.9, 10.0]);
    // v = 0.9·1.9 − 1 = 0.71;      x = 2.9 + 0.71 = 3.61
    s.apply(&mut x, &[-1.0, 0.0]).unwrap();
    assert_close(&x, &[3.61, 10.0]);
    assert_close(&s.export_state().vectors["velocity"], &[0.71, 0.0]);
}

#[test]
fn fedavgm_applies_the_server_learning_rate_to_the_velocity() {
    let mut s = FedAvgM::new(0.5, 0.5).unwrap();
    let mut x = [0.0];
    // v = 2;            x = 0 + 0.5·2 = 1
    s.apply(&mut x, &[2.0]).unwrap();
    // v = 0.5·2 + 2 = 3; x = 1 + 0.5·3 = 2.5
    s.apply(&mut x, &[2.0]).unwrap();
    assert_close(&x, &[2.5]);
}

#[test]
fn fedadam_three_steps() {
    // η = 1, β1 = 0.5, β2 = 0.5, τ = 1, so v starts at τ² = 1.
    let mut s = FedOpt::adam(1.0, 0.5, 0.5, 1.0).unwrap();
    let mut x = [0.0, 2.0];
    // Δ = [1, 0]:  m = [0.5, 0], v = [0.5·1 + 0.5·1, 0.5·1] = [1, 0.5]
    //              x = [0 + 0.5/(√1 + 1), 2 + 0] = [0.25, 2]
    s.apply(&mut x, &[1.0, 0.0]).unwrap();
    assert_close(&x, &[0.25, 2.0]);
    // Δ = [−1, 0]: m = [0.25 − 0.5, 0] = [−0.25, 0], v = [0.5 + 0.5, 0.25] = [1, 0.25]
    //              x = [0.25 − 0.25/2, 2] = [0.125, 2]
    s.apply(&mut x, &[-1.0, 0.0]).unwrap();
    assert_close(&x, &[0.125, 2.0]);
    // Δ = [3, 0]:  m = [−0.125 + 1.5, 0] = [1.375, 0], v = [0.5 + 4.5, 0.125] = [5, 0.125]
    //              x = [0.125 + 1.375/(√5 + 1), 2] = [0.125 + 0.4248984, 2] = [0.5498984, 2]
    s.apply(&mut x, &[3.0, 0.0]).unwrap();
    assert_close(&x, &[0.549_898_367, 2.0]);
    let state = s.export_state();
    assert_close(&state.vectors["m"], &[1.375, 0.0]);
    assert_close(&state.vectors["v"], &[5.0, 0.125]);
    assert_eq!(state.steps, 3);
}

#[test]
fn fedadam_with_flower_defaults_moves_by_about_eta() {
    let mut s = StrategyConfig::FedAdam {
        eta: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        tau: 1e-9,
    }
    .build()
    .unwrap();
    let mut x = [0.0, 0.0];
    // Δ = 0.5: m = 0.1·0.5 = 0.05, v = 0.99·1e-18 + 0.01·0.25 ≈ 0.0025, √v = 0.05,
    // x = 0.1·0.05/(0.05 + 1e-9) ≈ 0.1 (and −0.1 for Δ = −0.5).
    s.apply(&mut x, &[0.5, -0.5]).unwrap();
    assert_close(&x, &[0.099_999_998, -0.099_999_998]);
}

#[test]
fn fedyogi_three_steps() {
    // η = 1, β1 = 0.5, β2 = 0.5, τ = 1, so v starts at τ² = 1.
    let mut s = FedOpt::yogi(1.0, 0.5, 0.5, 1.0).unwrap();
    let mut x = [0.0];
    // Δ = 1:   m = 0.5, v = 1 − 0.5·1·sign(1 − 1) = 1 (sign(0) = 0, not 1)
    //          x = 0.5/(1 + 1) = 0.25
    s.apply(&mut x, &[1.0]).unwrap();
    assert_close(&x, &[0.25]);
    assert_close(&s.export_state().vectors["v"], &[1.0]);
    // Δ = 2:   m = 0.25 + 1 = 1.25, v = 1 − 0.5·4·sign(1 − 4) = 3
    //          x = 0.25 + 1.25/(√3 + 1) = 0.25 + 0.4575318 = 0.7075318
    s.apply(&mut x, &[2.0]).unwrap();
    assert_close(&x, &[0.707_531_755]);
    // Δ = 0.5: m = 0.625 + 0.25 = 0.875, v = 3 − 0.5·0.25·sign(3 − 0.25) = 2.875
    //          x = 0.7075318 + 0.875/(√2.875 + 1) = 0.7075318 + 0.3246052 = 1.0321369
    s.apply(&mut x, &[0.5]).unwrap();
    assert_close(&x, &[1.032_136_919]);
    assert_close(&s.export_state().vectors["v"], &[2.875]);
}

#[test]
fn fedyogi_with_flower_defaults_first_step() {
    let mut s = FedOpt::yogi(0.01, 0.9, 0.99, 1e-3).unwrap();
    let mut x = [0.0];
    // Δ = 0.5: m = 0.05, v = 1e-6 − 0.01·0.25·sign(1e-6 − 0.25) = 0.002501,
    // x = 0.01·0.05/(√0.002501 + 0.001) = 0.0005/0.0510100 = 0.0098020
    s.apply(&mut x, &[0.5]).unwrap();
    assert_close(&x, &[0.009_801_999_8]);
}

#[test]
fn fedadagrad_two_steps() {
    // η = 1, β1 = 0, τ = 1, so v starts at 1.
    let mut s = FedOpt::adagrad(1.0, 0.0, 1.0).unwrap();
    let mut x = [0.0];
    // Δ = 1: m = 1, v = 1 + 1 = 2, x = 1/(√2 + 1) = √2 − 1 = 0.4142136
    s.apply(&mut x, &[1.0]).unwrap();
    assert_close(&x, &[0.414_213_562]);
    // Δ = 2: m = 2, v = 2 + 4 = 6, x = 0.4142136 + 2/(√6 + 1) = 0.4142136 + 0.5797959 = 0.9940095
    s.apply(&mut x, &[2.0]).unwrap();
    assert_close(&x, &[0.994_009_459]);
}

#[test]
fn fedadagrad_with_momentum() {
    let mut s = FedOpt::adagrad(1.0, 0.5, 1.0).unwrap();
    let mut x = [0.0];
    // Δ = 1: m = 0.5, v = 2, x = 0.5/(√2 + 1) = 0.2071068
    s.apply(&mut x, &[1.0]).unwrap();
    assert_close(&x, &[0.207_106_781]);
}

#[test]
fn mismatched_lengths_are_errors_and_change_nothing() {
    for config in all_configs() {
        let mut s = config.build().unwrap();
        let mut x = vec![1.0; 3];
        let err = s.apply(&mut x, &[0.5; 2]).unwrap_err();
        assert_eq!(
            err,
            StrategyError::LengthMismatch {
                global: 3,
                update: 2
            },
            "{}",
            s.name()
        );
        assert_eq!(x, vec![1.0; 3]);
        assert_eq!(s.export_state().steps, 0);

        // Once state exists, a model of another length is refused (stateful strategies) or
        // accepted (FedAvg keeps no vectors).
        s.apply(&mut x, &[0.5; 3]).unwrap();
        let mut y = vec![1.0; 4];
        let result = s.apply(&mut y, &[0.5; 4]);
        if s.name() == FedAvg::NAME {
            result.unwrap();
        } else {
            assert_eq!(
                result.unwrap_err(),
                StrategyError::StateLengthMismatch {
                    strategy: s.name(),
                    state: 3,
                    update: 4
                }
            );
            assert_eq!(y, vec![1.0; 4]);
        }
    }
}

#[test]
fn non_finite_updates_are_refused_without_touching_state() {
    for config in all_configs() {
        let mut s = config.build().unwrap();
        let mut twin = config.build().unwrap();
        let mut x = vec![0.5; 3];
        let mut x_twin = x.clone();
        s.apply(&mut x, &[0.1, 0.2, 0.3]).unwrap();
        twin.apply(&mut x_twin, &[0.1, 0.2, 0.3]).unwrap();

        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let before = x.clone();
            let err = s.apply(&mut x, &[0.0, bad, 0.0]).unwrap_err();
            assert!(
                matches!(err, StrategyError::UnusableUpdate { index: 1, .. }),
                "{}: {err:?}",
                s.name()
            );
            assert_eq!(x, before);
        }
        // The refused updates left no trace: both strategies agree bit for bit.
        s.apply(&mut x, &[-0.3, 0.0, 0.3]).unwrap();
        twin.apply(&mut x_twin, &[-0.3, 0.0, 0.3]).unwrap();
        assert_eq!(x, x_twin, "{}", s.name());
        assert_eq!(s.export_state(), twin.export_state());
    }
}

#[test]
fn adaptive_strategies_refuse_updates_whose_square_overflows() {
    let mut adam = FedOpt::adam(0.1, 0.9, 0.99, 1e-9).unwrap();
    let mut x = [0.0];
    assert!(matches!(
        adam.apply(&mut x, &[1e19]),
        Err(StrategyError::UnusableUpdate { index: 0, .. })
    ));
    // FedAvg squares nothing and accepts it.
    FedAvg::new(1.0).unwrap().apply(&mut x, &[1e19]).unwrap();
    assert_eq!(x, [1e19]);
}

#[test]
fn invalid_hyper_parameters_are_named() {
    let cases = [
        (StrategyConfig::FedAvg { server_lr: 0.0 }, "server_lr"),
        (
            StrategyConfig::FedAvg {
                server_lr: f32::INFINITY,
            },
            "server_lr",
        ),
        (
            StrategyConfig::FedAvgM {
                server_lr: -1.0,
                momentum: 0.9,
            },
            "server_lr",
        ),
        (
            StrategyConfig::FedAvgM {
                server_lr: 1.0,
                momentum: 1.0,
            },
            "momentum",
        ),
        (
            StrategyConfig::FedAdam {
                eta: 0.0,
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-9,
            },
            "eta",
        ),
        (
            StrategyConfig::FedAdam {
                eta: 0.1,
                beta1: 1.0,
                beta2: 0.99,
                tau: 1e-9,
            },
            "beta1",
        ),
        (
            StrategyConfig::FedAdam {
                eta: 0.1,
                beta1: 0.9,
                beta2: -0.1,
                tau: 1e-9,
            },
            "beta2",
        ),
        (
            StrategyConfig::FedYogi {
                eta: 0.1,
                beta1: 0.9,
                beta2: 0.99,
                tau: 0.0,
            },
            "tau",
        ),
        (
            StrategyConfig::FedYogi {
                eta: 0.1,
                beta1: 0.9,
                beta2: f32::NAN,
                tau: 1e-3,
            },
            "beta2",
        ),
        (
            StrategyConfig::FedAdagrad {
                eta: f32::NAN,
                beta1: 0.0,
                tau: 1e-9,
            },
            "eta",
        ),
        (
            StrategyConfig::FedAdagrad {
                eta: 0.1,
                beta1: 0.0,
                tau: -1.0,
            },
            "tau",
        ),
    ];
    for (config, param) in cases {
        let err = match config.build() {
            Ok(_) => panic!("{config:?} was accepted"),
            Err(err) => err,
        };
        match &err {
            StrategyError::InvalidParameter { strategy, name, .. } => {
                assert_eq!(*name, param, "{config:?}");
                assert_eq!(*strategy, config.name());
            }
            other => panic!("{config:?}: unexpected error {other:?}"),
        }
        assert!(err.to_string().contains(param), "{err}");
    }
}

#[test]
fn config_defaults_follow_the_documented_values() {
    assert_eq!(
        all_configs(),
        vec![
            StrategyConfig::FedAvg { server_lr: 1.0 },
            StrategyConfig::FedAvgM {
                server_lr: 1.0,
                momentum: 0.9
            },
            StrategyConfig::FedAdam {
                eta: 0.1,
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-9
            },
            StrategyConfig::FedYogi {
                eta: 0.01,
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-3
            },
            StrategyConfig::FedAdagrad {
                eta: 0.1,
                beta1: 0.0,
                tau: 1e-9
            },
        ]
    );
    assert_eq!(
        StrategyConfig::default(),
        StrategyConfig::FedAvg { server_lr: 1.0 }
    );
}

#[test]
fn config_names_match_the_built_strategies() {
    for config in all_configs() {
        assert_eq!(config.build().unwrap().name(), config.name());
        // The name is the serde tag.
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["kind"], config.name());
    }
}

#[test]
fn config_round_trips_through_json_and_toml() {
    let configs = [
        StrategyConfig::FedAvg { server_lr: 0.7 },
        StrategyConfig::FedAvgM {
            server_lr: 0.5,
            momentum: 0.3,
        },
        StrategyConfig::FedAdam {
            eta: 0.05,
            beta1: 0.8,
            beta2: 0.95,
            tau: 1e-4,
        },
        StrategyConfig::FedYogi {
            eta: 0.02,
            beta1: 0.85,
            beta2: 0.9,
            tau: 2e-3,
        },
        StrategyConfig::FedAdagrad {
            eta: 0.3,
            beta1: 0.1,
            tau: 1e-6,
        },
    ];
    for config in configs {
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<StrategyConfig>(&json).unwrap(),
            config
        );
        let toml_text = toml::to_string(&config).unwrap();
        assert_eq!(
            toml::from_str::<StrategyConfig>(&toml_text).unwrap(),
            config,
            "{toml_text}"
        );
    }
}

#[test]
fn toml_config_takes_defaults_aliases_and_refuses_unknown_fields() {
    let partial: StrategyConfig = toml::from_str("kind = \"fed_adam\"\neta = 0.05\n").unwrap();
    assert_eq!(
        partial,
        StrategyConfig::FedAdam {
            eta: 0.05,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-9
        }
    );
    let alias: StrategyConfig = toml::from_str("kind = \"fedyogi\"").unwrap();
    assert_eq!(alias.name(), "fed_yogi");

    let misspelt = toml::from_str::<StrategyConfig>("kind = \"fed_adam\"\nbetta1 = 0.5\n");
    let err = misspelt.unwrap_err().to_string();
    assert!(err.contains("betta1"), "{err}");
    assert!(toml::from_str::<StrategyConfig>("kind = \"fed_sgd\"").is_err());
    assert!(toml::from_str::<StrategyConfig>("eta = 0.1").is_err());
}

#[test]
fn exported_state_resumes_identically_after_a_restart() {
    for config in all_configs() {
        let mut original = config.build().unwrap();
        let mut x = vec![0.5, -0.25, 1.0];
        original.apply(&mut x, &[0.1, -0.2, 0.05]).unwrap();
        original.apply(&mut x, &[0.3, 0.1, -0.4]).unwrap();

        let saved = serde_json::to_string(&original.export_state()).unwrap();
        let mut restored = config.build().unwrap();
        restored
            .import_state(serde_json::from_str(&saved).unwrap())
            .unwrap();
        assert_eq!(restored.export_state(), original.export_state());

        let mut y = x.clone();
        original.apply(&mut x, &[-0.2, 0.25, 0.15]).unwrap();
        restored.apply(&mut y, &[-0.2, 0.25, 0.15]).unwrap();
        assert_eq!(x, y, "{}", config.name());
        assert_eq!(restored.export_state().steps, 3);

        // The restored state carries the model length.
        if config.name() != FedAvg::NAME {
            let mut fresh = config.build().unwrap();
            fresh
                .import_state(serde_json::from_str(&saved).unwrap())
                .unwrap();
            assert!(matches!(
                fresh.apply(&mut [0.0; 2], &[0.0; 2]),
                Err(StrategyError::StateLengthMismatch { state: 3, .. })
            ));
        }
    }
}

#[test]
fn a_fresh_state_resets_the_strategy() {
    let mut s = FedOpt::adam(1.0, 0.5, 0.5, 1.0).unwrap();
    s.apply(&mut [0.0; 2], &[1.0, 1.0]).unwrap();
    s.import_state(StrategyState {
        strategy: "fed_adam".to_owned(),
        steps: 0,
        vectors: BTreeMap::new(),
    })
    .unwrap();
    // Behaves like a new FedAdam: a model of another length is fine, and the first step is 0.25.
    let mut x = [0.0];
    s.apply(&mut x, &[1.0]).unwrap();
    assert_close(&x, &[0.25]);
}

#[test]
fn unusable_saved_state_is_refused() {
    let vectors = |pairs: &[(&str, Vec<f32>)]| -> BTreeMap<String, Vec<f32>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    };
    let state = |strategy: &str, v: BTreeMap<String, Vec<f32>>| StrategyState {
        strategy: strategy.to_owned(),
        steps: 4,
        vectors: v,
    };
    let mut adam = FedOpt::adam(0.1, 0.9, 0.99, 1e-9).unwrap();
    let good = vectors(&[("m", vec![0.1, 0.2]), ("v", vec![0.01, 0.04])]);

    assert!(matches!(
        adam.import_state(state("fed_yogi", good.clone())),
        Err(StrategyError::StateForOtherStrategy {
            expected: "fed_adam",
            ..
        })
    ));
    let cases = [
        vectors(&[("m", vec![0.1, 0.2])]),
        vectors(&[("m", vec![0.1]), ("v", vec![0.01]), ("w", vec![0.0])]),
        vectors(&[("m", vec![0.1, 0.2]), ("v", vec![0.01])]),
        vectors(&[("m", vec![0.1, f32::NAN]), ("v", vec![0.01, 0.04])]),
        vectors(&[("m", vec![0.1, 0.2]), ("v", vec![0.01, -0.04])]),
    ];
    for bad in cases {
        let err = adam
            .import_state(state("fed_adam", bad.clone()))
            .unwrap_err();
        assert!(
            matches!(
                err,
                StrategyError::BadState {
                    strategy: "fed_adam",
                    ..
                }
            ),
            "{bad:?}: {err:?}"
        );
    }
    // None of the refused states was half-loaded.
    assert_eq!(adam.export_state().steps, 0);
    assert!(adam.export_state().vectors.is_empty());
    adam.import_state(state("fed_adam", good.clone())).unwrap();
    assert_eq!(adam.export_state(), state("fed_adam", good));

    let mut fedavg = FedAvg::new(1.0).unwrap();
    assert!(matches!(
        fedavg.import_state(state("fed_avg", vectors(&[("velocity", vec![1.0])]))),
        Err(StrategyError::BadState { .. })
    ));
    let mut avgm = FedAvgM::new(1.0, 0.9).unwrap();
    avgm.import_state(state("fed_avg_m", vectors(&[("velocity", vec![1.0])])))
        .unwrap();
    let mut x = [0.0];
    // v = 0.9·1 + 1 = 1.9
    avgm.apply(&mut x, &[1.0]).unwrap();
    assert_close(&x, &[1.9]);
}
