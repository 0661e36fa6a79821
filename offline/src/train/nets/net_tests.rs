//! Tiny-config CPU tests of the three nets: shapes, the mask bound, gradients reaching every
//! variable, and checkpoint round trips.

use stemmark_models::spec::{BINS, BLOCK, KEY_DIM, MESSAGE_BITS, STEM_NAMES};
use tch::{Device, Kind, Tensor};

use super::NetConfig;
use crate::train::checkpoint::Nets;

fn bipolar(shape: &[i64]) -> Tensor {
    crate::train::stage::randn(shape, (Kind::Float, Device::Cpu)).sign()
}

fn magnitude(b: i64, t: i64) -> Tensor {
    (crate::train::stage::randn([b, BINS as i64, t], (Kind::Float, Device::Cpu)) * 10.0).abs()
}

fn nets(seed: i64) -> Nets {
    crate::train::stage::seeded_nets(&NetConfig::tiny(), Device::Cpu, seed as u64).unwrap()
}

#[test]
fn embedder_mask_has_the_right_shape_and_bound() {
    let n = nets(1);
    let b = n.config.embedder.mask_bound as f64;
    // Large magnitudes push the pre-tanh activations far out, so the bound is really exercised.
    for scale in [1.0, 1e4] {
        let mask = n.embedder.forward(
            &(magnitude(2, 30) * scale),
            &bipolar(&[2, MESSAGE_BITS as i64]),
            &bipolar(&[2, KEY_DIM as i64]),
        );
        assert_eq!(mask.size(), [2, BINS as i64, 30]);
        let (lo, hi) = (
            f64::try_from(mask.min()).unwrap(),
            f64::try_from(mask.max()).unwrap(),
        );
        assert!(
            lo >= 1.0 - b - 1e-6 && hi <= 1.0 + b + 1e-6,
            "mask in [{lo}, {hi}], bound {b}"
        );
        assert!(hi - lo > 1e-3, "the mask is not constant");
    }
}

#[test]
fn detector_and_separator_shapes() {
    let n = nets(2);
    let audio = crate::train::stage::randn([3, BLOCK as i64], (Kind::Float, Device::Cpu)) * 0.1;
    assert_eq!(
        n.detector
            .forward(&audio, &bipolar(&[3, KEY_DIM as i64]))
            .size(),
        [3, MESSAGE_BITS as i64]
    );
    // A length that is not a multiple of stride^depth: padded inside, cropped back.
    for len in [1000i64, 1024, 37] {
        let mix = crate::train::stage::randn([2, 2, len], (Kind::Float, Device::Cpu)) * 0.1;
        assert_eq!(
            n.separator.forward(&mix).size(),
            [2, STEM_NAMES.len() as i64, 2, len]
        );
    }
}

/// Names of the variables of `vs` whose gradient is missing or zero.
fn without_gradient(vs: &tch::nn::VarStore) -> Vec<String> {
    let mut bad: Vec<String> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| {
            let g = t.grad();
            !g.defined() || f64::try_from(g.abs().sum(Kind::Float)).unwrap() == 0.0
        })
        .map(|(n, _)| n)
        .collect();
    bad.sort();
    bad
}

#[test]
fn every_variable_gets_a_gradient() {
    let n = nets(3);
    let target = |x: &Tensor| (x - x.detach() * 0.5 - 0.3).square().mean(Kind::Float);
    let mask = n.embedder.forward(
        &magnitude(2, 20),
        &bipolar(&[2, MESSAGE_BITS as i64]),
        &bipolar(&[2, KEY_DIM as i64]),
    );
    target(&mask).backward();
    assert_eq!(without_gradient(&n.embedder_vs), Vec::<String>::new());

    let logits = n.detector.forward(
        &(crate::train::stage::randn([2, BLOCK as i64], (Kind::Float, Device::Cpu)) * 0.1),
        &bipolar(&[2, KEY_DIM as i64]),
    );
    logits
        .binary_cross_entropy_with_logits::<Tensor>(
            &bipolar(&[2, MESSAGE_BITS as i64]).relu(),
            None,
            None,
            tch::Reduction::Mean,
        )
        .backward();
    assert_eq!(without_gradient(&n.detector_vs), Vec::<String>::new());

    let mix = crate::train::stage::randn([2, 2, 700], (Kind::Float, Device::Cpu)) * 0.1;
    let stems = n.separator.forward(&mix);
    (stems - mix.unsqueeze(1) * 0.5)
        .abs()
        .mean(Kind::Float)
        .backward();
    assert_eq!(without_gradient(&n.separator_vs), Vec::<String>::new());
}

#[test]
fn checkpoints_round_trip_with_stable_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let a = nets(4);
    a.save(&path).unwrap();
    let mut b = nets(5);
    let audio = crate::train::stage::randn([1, BLOCK as i64], (Kind::Float, Device::Cpu)) * 0.1;
    let key = bipolar(&[1, KEY_DIM as i64]);
    let before = b.detector.forward(&audio, &key);
    b.load(&path).unwrap();
    let ya = a.detector.forward(&audio, &key);
    let yb = b.detector.forward(&audio, &key);
    assert!(
        f64::try_from((&ya - &before).abs().max()).unwrap() > 0.0,
        "different seeds give different nets"
    );
    // Exact by design: the loaded weights are copies, so the same graph runs on the same numbers.
    assert_eq!(f64::try_from((&ya - &yb).abs().max()).unwrap(), 0.0);
    let names: Vec<String> = a.variables().into_iter().map(|(n, _)| n).collect();
    for want in [
        "embedder.blocks.0.mhsa.qkv.weight",
        "detector.convs.0.film.head.bias",
        "separator.lstm.weight_ih_l0_reverse",
    ] {
        assert!(names.iter().any(|n| n == want), "no {want} in {names:?}");
    }
    // A checkpoint of another config is refused, not half-loaded.
    let mut other = NetConfig::tiny();
    other.detector.channels.push(8);
    let mut c = Nets::new(&other, Device::Cpu).unwrap();
    assert!(c.load(&path).is_err());
}

#[test]
fn one_net_can_be_taken_from_another_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.safetensors");
    let a = nets(7);
    a.save(&path).unwrap();
    let mut b = nets(8);
    let before: std::collections::HashMap<String, Tensor> = b.variables().into_iter().map(|(n, t)| (n, t.copy())).collect();
    b.load_net(&path, "separator").unwrap();
    let from_a: std::collections::HashMap<String, Tensor> = a.variables().into_iter().collect();
    for (name, t) in b.variables() {
        let want = if name.starts_with("separator.") { &from_a[&name] } else { &before[&name] };
        assert!(t.equal(want), "{name} is not where it should come from");
    }
    assert!(b.load_net(&path, "nothing").is_err(), "a net that is not there is an error");
}

#[test]
fn weight_names_and_shapes_are_what_the_export_expects() {
    for config in [NetConfig::tiny(), NetConfig::default()] {
        let n = Nets::new(&config, Device::Cpu).unwrap();
        let have: std::collections::BTreeMap<String, Vec<usize>> = n
            .variables()
            .into_iter()
            .map(|(k, t)| (k, t.size().iter().map(|&d| d as usize).collect()))
            .collect();
        assert_eq!(have, config.weight_shapes());
    }
}

#[test]
fn export_refuses_weights_of_another_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    nets(6).save(&path).unwrap();
    let mut other = NetConfig::tiny();
    other.separator.channels += 1;
    let err =
        crate::train::export::export_models(&path, &other, &dir.path().join("out")).unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("does not fit the network config") && err.contains("`separator."),
        "{err}"
    );
}
