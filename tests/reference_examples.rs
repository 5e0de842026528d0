//! The values `seed_examples` prints (every example of Nabla's autodiff page, ported one to one,
//! and our own examples of the rest of the API) against JAX's, computed in float64 by
//! `ci/gen_reference_examples.py` into `tests/fixtures/reference_examples.json`. The examples
//! run in f64 (compared at 1e-12 relative) and in f32, Nabla's default dtype (at 2e-6
//! relative, a few f32 roundings).

#[path = "../examples/reference/mod.rs"]
mod reference;

use std::collections::BTreeMap;

use nabla::{DType, Tensor};
use reference::Named;

/// One example's value from the fixture.
struct Expected {
    shape: Vec<usize>,
    data: Vec<f64>,
}

/// The fixture, by name, and the names in its order.
fn fixture() -> (BTreeMap<String, Expected>, Vec<String>) {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/reference_examples.json")).expect("the fixture is JSON");
    assert_eq!(doc["dtype"], "f64", "the fixture is computed in float64");
    let mut map = BTreeMap::new();
    let mut order = Vec::new();
    for e in doc["examples"].as_array().expect("an examples list") {
        let name = e["name"].as_str().expect("a name").to_string();
        let shape = e["shape"].as_array().expect("a shape");
        let data = e["data"].as_array().expect("data");
        let expected = Expected {
            shape: shape
                .iter()
                .map(|d| d.as_u64().expect("a dimension") as usize)
                .collect(),
            data: data.iter().map(|v| v.as_f64().expect("a number")).collect(),
        };
        assert!(map.insert(name.clone(), expected).is_none(), "{name} appears twice");
        order.push(name);
    }
    (map, order)
}

/// Compares every example with the fixture; returns the largest relative error seen. Fails
/// with every mismatch listed (name, ours, JAX's).
fn check(examples: &[Named], dtype: DType, rtol: f64) -> f64 {
    let (expected, _) = fixture();
    let mut problems = Vec::new();
    let mut worst = 0.0f64;
    for (name, value) in examples {
        let Some(want) = expected.get(name) else {
            problems.push(format!(
                "{name}: not in the fixture (regenerate it with ci/gen_reference_examples.py)"
            ));
            continue;
        };
        if value.shape() != want.shape.as_slice() || value.dtype() != dtype {
            problems.push(format!(
                "{name}: ours has shape {:?} ({}), JAX's {:?} ({dtype} expected)",
                value.shape(),
                value.dtype(),
                want.shape
            ));
            continue;
        }
        let ours = value.cast(DType::F64).to_vec::<f64>();
        for (k, (a, b)) in ours.iter().zip(&want.data).enumerate() {
            let err = (a - b).abs() / b.abs().max(1.0);
            worst = worst.max(err);
            if err.is_nan() || err > rtol {
                problems.push(format!("{name}[{k}]: ours {a:e}, JAX {b:e} (relative error {err:.1e})"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} mismatches against JAX:\n{}",
        problems.len(),
        problems.join("\n")
    );
    worst
}

/// The names of a list of examples.
fn names(examples: &[Named]) -> Vec<String> {
    examples.iter().map(|(n, _)| n.clone()).collect()
}

#[test]
fn nabla_page_examples_match_jax_in_f64() {
    let worst = check(&reference::nabla_page_examples(DType::F64), DType::F64, 1e-12);
    println!("largest relative error {worst:.1e}");
}

#[test]
fn nabla_page_examples_match_jax_in_f32() {
    let worst = check(&reference::nabla_page_examples(DType::F32), DType::F32, 2e-6);
    println!("largest relative error {worst:.1e}");
}

#[test]
fn more_examples_match_jax_in_f64() {
    let worst = check(&reference::more_examples(DType::F64), DType::F64, 1e-12);
    println!("largest relative error {worst:.1e}");
}

#[test]
fn more_examples_match_jax_in_f32() {
    let worst = check(&reference::more_examples(DType::F32), DType::F32, 2e-6);
    println!("largest relative error {worst:.1e}");
}

/// Every fixture entry is computed by exactly one Rust example, in the same order, and the page
/// contributes its 25 values (2 from grad, 4 from value_and_grad, 5 from vjp, 4 from jvp, 5
/// each from jacfwd and jacrev), so a skipped example cannot pass unnoticed.
#[test]
fn every_fixture_entry_has_its_example() {
    let page = names(&reference::nabla_page_examples(DType::F64));
    let more = names(&reference::more_examples(DType::F64));
    assert_eq!(page.len(), 2 + 4 + 5 + 4 + 5 + 5, "values of the page's examples");
    let ours: Vec<String> = page.into_iter().chain(more).collect();
    assert_eq!(ours, fixture().1);
}

/// A wrong value is reported: the comparison itself can fail.
#[test]
fn a_wrong_value_is_a_mismatch() {
    let mut examples = reference::nabla_page_examples(DType::F64);
    let (name, value) = examples[0].clone();
    examples[0] = (name, value.clone() + Tensor::full(value.shape(), 1e-9, DType::F64));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&examples, DType::F64, 1e-12)));
    assert!(result.is_err(), "an error of 1e-9 passed a 1e-12 tolerance");
}
