//! The wgpu and flex backends compute the same forward pass, within a stated tolerance, for
//! models built from specs (the CNN, the LSTM and the MLP), from the same weights.

mod common;

use cohort_datasets::Dataset;
use cohort_learning::{ComputeBackend, Examples, LocalTrainer, ModelSpec};

/// Largest allowed difference between the backends' logits: `ABS + REL * |flex logit|`.
/// f32 sums in a different order differ by a few ulps per operation; a 5-layer CNN over 784
/// inputs differed by at most 1.2e-7 on lavapipe.
const ABS_TOLERANCE: f32 = 1e-5;
const REL_TOLERANCE: f32 = 1e-5;

fn random_dense(shape: &[usize], n: usize, classes: u32, seed: u64) -> Dataset {
    // A small LCG: reproducible inputs without depending on rand's stream.
    let len: usize = shape.iter().product();
    let mut state = seed;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let features = (0..n * len).map(|_| next()).collect();
    let labels = (0..n).map(|i| (i as u32) % classes).collect();
    Dataset::from_dense(features, labels, shape.to_vec(), classes).unwrap()
}

fn tokens(n: usize, seq: usize, vocab: u32) -> Dataset {
    let features = (0..n * seq)
        .map(|i| ((i * 7 + i / 3) % vocab as usize) as f32)
        .collect();
    let labels = (0..n).map(|i| (i as u32) % vocab).collect();
    Dataset::from_dense(features, labels, vec![seq], vocab).unwrap()
}

fn compare(name: &str, spec: &ModelSpec, data: &Dataset, wgpu: &ComputeBackend) {
    let weights = spec.initial_weights(5).unwrap();
    let mut flex = LocalTrainer::new(spec, &ComputeBackend::flex()).unwrap();
    let mut gpu = LocalTrainer::new(spec, wgpu).unwrap();
    let a = flex.predict(&weights, Examples::all(data)).unwrap();
    let b = gpu.predict(&weights, Examples::all(data)).unwrap();
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f32;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let diff = (x - y).abs();
        worst = worst.max(diff);
        assert!(
            diff <= ABS_TOLERANCE + REL_TOLERANCE * x.abs(),
            "{name}: logit {i} differs: flex {x}, wgpu {y}"
        );
    }
    eprintln!(
        "{name}: {} logits, largest |flex - wgpu| = {worst:e}",
        a.len()
    );
}

#[test]
fn wgpu_and_flex_forward_passes_agree() {
    common::init_tracing();
    let Some(wgpu) = common::wgpu_or_skip("wgpu_and_flex_forward_passes_agree") else {
        return;
    };
    compare(
        "mnist_cnn",
        &ModelSpec::mnist_cnn(10),
        &random_dense(&[1, 28, 28], 16, 10, 1),
        &wgpu,
    );
    compare(
        "mnist_mlp",
        &ModelSpec::mnist_mlp(),
        &random_dense(&[784], 32, 10, 2),
        &wgpu,
    );
    compare(
        "shakespeare_lstm",
        &ModelSpec::shakespeare_lstm(20, 40),
        &tokens(8, 20, 40),
        &wgpu,
    );
}
