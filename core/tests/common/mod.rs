//! Shared by the fixture-driven tests: the JSON fixture reader and the table that maps an op
//! name and its params (as written by `ci/gen_fixtures.py`) to nabla calls.
#![allow(dead_code)]

use nabla_core as nb;
use nb::{Axes, DType, Sl, Tensor};
use serde_json::Value;

/// Values in `[-4, 4)` from a fixed integer hash (no random state to seed).
pub fn hashed_values(n: usize, seed: u64) -> Vec<f64> {
    (0..n as u64)
        .map(|i| {
            let h = (i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
            (h % 8000) as f64 / 1000.0 - 4.0
        })
        .collect()
}

/// One fixture case.
#[derive(Clone)]
pub struct Case {
    pub name: String,
    pub op: String,
    pub params: Value,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
    pub raw: Value,
}

/// A fixture tensor as a nabla tensor.
pub fn tensor_from(v: &Value) -> Tensor {
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap() as usize)
        .collect();
    let data = v["data"].as_array().unwrap();
    match v["dtype"].as_str().unwrap() {
        "f64" => Tensor::from_vec(data.iter().map(float).collect::<Vec<f64>>(), &shape),
        "f32" => Tensor::from_vec(data.iter().map(|x| float(x) as f32).collect::<Vec<f32>>(), &shape),
        "i64" => Tensor::from_vec(data.iter().map(|x| x.as_i64().unwrap()).collect::<Vec<i64>>(), &shape),
        "bool" => Tensor::from_vec(data.iter().map(|x| x.as_bool().unwrap()).collect::<Vec<bool>>(), &shape),
        d => panic!("unknown fixture dtype {d}"),
    }
}

/// A fixture float: a JSON number, or the string "nan", "inf" or "-inf" (JSON has no
/// non-finite numbers; `ci/gen_kink_fixtures.py` writes them so).
fn float(x: &Value) -> f64 {
    match x.as_str() {
        Some("nan") => f64::NAN,
        Some("inf") => f64::INFINITY,
        Some("-inf") => f64::NEG_INFINITY,
        Some(other) => panic!("fixture float: unexpected string {other:?}"),
        None => x.as_f64().unwrap_or_else(|| panic!("fixture float: not a number: {x}")),
    }
}

/// All cases of `core/tests/fixtures/ops_f64.json` (`ci/gen_fixtures.py`) and `layer_ops.json`
/// (`ci/gen_layer_fixtures.py`), embedded so that other crates' tests that include this module
/// by path, such as the CUDA backend's conformance test, read the same.
pub fn load_cases() -> Vec<Case> {
    [
        include_str!("../fixtures/ops_f64.json"),
        include_str!("../fixtures/layer_ops.json"),
    ]
    .iter()
    .flat_map(|text| {
        let root: Value = serde_json::from_str(text).expect("fixture JSON");
        root["cases"].as_array().unwrap().clone()
    })
    .map(|c| {
        let outputs = match c.get("outputs") {
            Some(list) => list.as_array().unwrap().iter().map(tensor_from).collect(),
            None => vec![tensor_from(&c["output"])],
        };
        Case {
            name: c["name"].as_str().unwrap().to_string(),
            op: c["op"].as_str().unwrap().to_string(),
            params: c["params"].clone(),
            inputs: c["inputs"].as_array().unwrap().iter().map(tensor_from).collect(),
            outputs,
            raw: c.clone(),
        }
    })
    .flat_map(|c| {
        // The fixtures' convolutions are small, so `Auto` computes them with windows; every
        // one that the shifted rows can compute (stride 1, or any stride without dilation, over
        // phase images) is also run with them, under its own name.
        let unit = |key: &str| c.params.get(key).is_some_and(|s| pair(s) == (1, 1));
        let shifted = ((unit("stride") || unit("dilation")) && c.op.starts_with("conv")).then(|| {
            let mut params = c.params.clone();
            params["algorithm"] = Value::from("shifted_rows");
            Case {
                name: format!("{} (shifted rows)", c.name),
                params,
                ..c.clone()
            }
        });
        std::iter::once(c).chain(shifted)
    })
    .collect()
}

/// A `[a, b]` fixture pair.
fn pair(v: &Value) -> (usize, usize) {
    let a = v.as_array().unwrap();
    (a[0].as_u64().unwrap() as usize, a[1].as_u64().unwrap() as usize)
}

fn conv_options(p: &Value) -> nb::Conv2dOptions {
    nb::Conv2dOptions {
        stride: pair(&p["stride"]),
        padding: pair(&p["padding"]),
        dilation: pair(&p["dilation"]),
        groups: p["groups"].as_u64().unwrap() as usize,
        algorithm: match p.get("algorithm").and_then(Value::as_str) {
            Some("shifted_rows") => nb::ConvAlgorithm::ShiftedRows,
            Some("windows") => nb::ConvAlgorithm::Windows,
            _ => nb::ConvAlgorithm::Auto,
        },
    }
}

/// The pooling options of a fixture case: stride and padding, and PyTorch's `dilation`,
/// `ceil_mode`, `count_include_pad` and `divisor_override` where the case names them (their
/// defaults otherwise).
fn pool_options(p: &Value) -> nb::Pool2dOptions {
    let o = nb::Pool2dOptions::new(pair(&p["stride"]), pair(&p["padding"]))
        .dilation(p.get("dilation").map_or((1, 1), pair))
        .ceil_mode(p.get("ceil_mode").and_then(Value::as_bool).unwrap_or(false))
        .count_include_pad(p.get("count_include_pad").and_then(Value::as_bool).unwrap_or(true));
    match p.get("divisor_override").and_then(Value::as_u64) {
        Some(d) => o.divisor_override(d as usize),
        None => o,
    }
}

fn axes(v: &Value) -> Axes {
    match v.as_array() {
        None => Axes::All,
        Some(a) => Axes::List(a.iter().map(|x| x.as_i64().unwrap() as isize).collect()),
    }
}

fn int(v: &Value) -> isize {
    v.as_i64().unwrap() as isize
}

fn opt_int(v: &Value) -> Option<isize> {
    v.as_i64().map(|x| x as isize)
}

/// Runs op `op` with fixture params on `x` (inputs in fixture order).
pub fn apply(op: &str, p: &Value, x: &[Tensor]) -> Vec<Tensor> {
    let one = |t: Tensor| vec![t];
    match op {
        "neg" => one(-&x[0]),
        "exp" => one(x[0].exp()),
        "log" => one(x[0].log()),
        "log1p" => one(x[0].log1p()),
        "sqrt" => one(x[0].sqrt()),
        "rsqrt" => one(x[0].rsqrt()),
        "square" => one(x[0].square()),
        "abs" => one(x[0].abs()),
        "sign" => one(x[0].sign()),
        "sin" => one(x[0].sin()),
        "cos" => one(x[0].cos()),
        "tanh" => one(x[0].tanh()),
        "sigmoid" => one(x[0].sigmoid()),
        "relu" => one(x[0].relu()),
        "gelu" => one(x[0].gelu()),
        "gelu_exact" => one(x[0].gelu_exact()),
        "erf" => one(x[0].erf()),
        "floor" => one(x[0].floor()),
        "ceil" => one(x[0].ceil()),
        "round" => one(x[0].round()),
        "trunc" => one(x[0].trunc()),
        "remainder" => one(x[0].remainder(&x[1])),
        "triu" => one(x[0].triu(p["k"].as_i64().unwrap())),
        "tril" => one(x[0].tril(p["k"].as_i64().unwrap())),
        "conv2d" => one(nb::conv2d(&x[0], &x[1], conv_options(p))),
        "conv_transpose2d" => one(nb::conv_transpose2d(
            &x[0],
            &x[1],
            conv_options(p),
            pair(&p["output_padding"]),
        )),
        "max_pool2d" => one(nb::max_pool2d_with(&x[0], pair(&p["kernel"]), pool_options(p))),
        "avg_pool2d" => one(nb::avg_pool2d_with(&x[0], pair(&p["kernel"]), pool_options(p))),
        "sdpa" => one(nb::scaled_dot_product_attention(
            &x[0],
            &x[1],
            &x[2],
            x.get(3),
            p["causal"].as_bool().unwrap(),
        )),
        "cumsum" => one(x[0].cumsum(p["axis"].as_i64().unwrap() as isize)),
        "cumprod" => one(x[0].cumprod(p["axis"].as_i64().unwrap() as isize)),
        "layer_norm" => one(x[0].layer_norm(axes(&p["axes"]), p["eps"].as_f64().unwrap())),
        "batch_norm" => one(x[0]
            .batch_norm(&x[1], &x[2], int(&p["axis"]), p["eps"].as_f64().unwrap())
            .0),
        "batch_norm_eval" => {
            one(x[0].batch_norm_eval(&x[1], &x[2], &x[3], &x[4], int(&p["axis"]), p["eps"].as_f64().unwrap()))
        }
        // One rank: the identity as the sum over ranks.
        "batch_norm_synced" => one(x[0]
            .batch_norm_synced(
                &x[1],
                &x[2],
                int(&p["axis"]),
                p["eps"].as_f64().unwrap(),
                &nb::CrossRankSum::identity(),
            )
            .0),
        "rms_norm" => one(x[0].rms_norm(axes(&p["axes"]), p["eps"].as_f64().unwrap())),
        "silu" => one(x[0].silu()),
        "softplus" => one(x[0].softplus()),
        "add" => one(&x[0] + &x[1]),
        "sub" => one(&x[0] - &x[1]),
        "mul" => one(&x[0] * &x[1]),
        "div" => one(&x[0] / &x[1]),
        "pow" => one(x[0].pow(&x[1])),
        "maximum" => one(x[0].maximum(&x[1])),
        "minimum" => one(x[0].minimum(&x[1])),
        "pow_scalar" => one(x[0].powf(p["exponent"].as_f64().unwrap())),
        "eq" => one(x[0].eq(&x[1])),
        "ne" => one(x[0].ne(&x[1])),
        "lt" => one(x[0].lt(&x[1])),
        "le" => one(x[0].le(&x[1])),
        "gt" => one(x[0].gt(&x[1])),
        "ge" => one(x[0].ge(&x[1])),
        "logical_and" => one(x[0].logical_and(&x[1])),
        "logical_or" => one(x[0].logical_or(&x[1])),
        "logical_xor" => one(x[0].logical_xor(&x[1])),
        "logical_not" => one(x[0].logical_not()),
        "where" => one(nb::where_(&x[0], &x[1], &x[2])),
        "clamp" => one(x[0].clamp(p["min"].as_f64().unwrap(), p["max"].as_f64().unwrap())),
        "sum" | "mean" | "max" | "min" | "prod" | "var" | "logsumexp" => {
            let (a, k) = (axes(&p["axes"]), p["keepdims"].as_bool().unwrap());
            one(match op {
                "sum" => x[0].sum(a, k),
                "mean" => x[0].mean(a, k),
                "max" => x[0].max(a, k),
                "min" => x[0].min(a, k),
                "prod" => x[0].prod(a, k),
                "var" => x[0].var(a, k),
                _ => x[0].logsumexp(a, k),
            })
        }
        "argmax" => one(x[0].argmax(opt_int(&p["axis"]), p["keepdims"].as_bool().unwrap())),
        "argmin" => one(x[0].argmin(opt_int(&p["axis"]), p["keepdims"].as_bool().unwrap())),
        "matmul" => one(x[0].matmul(&x[1])),
        "dot" => one(x[0].dot(&x[1])),
        "outer" => one(x[0].outer(&x[1])),
        "reshape" => one(x[0].reshape(
            p["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect::<Vec<i64>>(),
        )),
        "transpose" => one(match p["axes"].as_array() {
            None => x[0].transpose(),
            Some(a) => x[0].permute(&a.iter().map(|v| v.as_u64().unwrap() as usize).collect::<Vec<_>>()),
        }),
        "broadcast_to" => one(x[0].broadcast_to(
            &p["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect::<Vec<_>>(),
        )),
        "expand_dims" => one(x[0].expand_dims(int(&p["axis"]))),
        "squeeze" => one(x[0].squeeze(axes(&p["axes"]))),
        "flatten" => one(x[0].flatten()),
        "slice" => {
            let specs: Vec<Sl> = p["ranges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| Sl::new(opt_int(&r[0]), opt_int(&r[1]), int(&r[2])))
                .collect();
            one(x[0].slice(&specs))
        }
        "flip" => one(x[0].flip(axes(&p["axes"]))),
        "pad" => {
            let w: Vec<(usize, usize)> = p["widths"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r[0].as_u64().unwrap() as usize, r[1].as_u64().unwrap() as usize))
                .collect();
            one(x[0].pad(&w))
        }
        "index" => one(x[0].i(int(&p["index"]))),
        "stack" => one(nb::stack(x, int(&p["axis"]))),
        "concatenate" => one(nb::concatenate(x, int(&p["axis"]))),
        "split" => x[0].split(p["sections"].as_u64().unwrap() as usize, int(&p["axis"])),
        "take" => one(x[0].take(&x[1], int(&p["axis"]))),
        "take_along_axis" => one(x[0].take_along_axis(&x[1], int(&p["axis"]))),
        "one_hot" => one(nb::one_hot(
            &x[0],
            p["num_classes"].as_u64().unwrap() as usize,
            DType::F64,
        )),
        "scatter_add" => one(x[0].scatter_add(&x[1], &x[2], int(&p["axis"]))),
        "softmax" => one(x[0].softmax(int(&p["axis"]))),
        "log_softmax" => one(x[0].log_softmax(int(&p["axis"]))),
        "cross_entropy" => one(nb::cross_entropy(&x[0], &x[1])),
        "mse" => one(nb::mse(&x[0], &x[1])),
        other => panic!("no mapping for fixture op {other}"),
    }
}

/// Indices of the float inputs (the ones derivatives are taken against).
pub fn float_inputs(inputs: &[Tensor]) -> Vec<usize> {
    (0..inputs.len()).filter(|&i| inputs[i].dtype().is_float()).collect()
}

/// `apply` as a function of the float inputs only (the others held fixed).
pub fn of_floats<'a>(op: &'a str, p: &'a Value, inputs: &'a [Tensor]) -> impl Fn(&[Tensor]) -> Vec<Tensor> + 'a {
    let idx = float_inputs(inputs);
    move |fs: &[Tensor]| {
        let mut all = inputs.to_vec();
        for (k, &i) in idx.iter().enumerate() {
            all[i] = fs[k].clone();
        }
        apply(op, p, &all)
    }
}

/// Max absolute difference after checking shape and dtype; panics with the case name.
pub fn assert_close(name: &str, what: &str, got: &Tensor, want: &Tensor, rtol: f64, atol: f64) {
    assert_eq!(got.shape(), want.shape(), "{name}: {what}: shape");
    let (g, w) = (got.to_vec::<f64>(), want.to_vec::<f64>());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(
            (a - b).abs() <= atol + rtol * b.abs(),
            "{name}: {what}: element {i}: got {a}, want {b}\n got {got}\nwant {want}"
        );
    }
}

/// The message of the panic that `f` raises; fails the test when it does not panic.
pub fn panic_message(f: impl FnOnce()) -> String {
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("expected a panic");
    match err.downcast::<String>() {
        Ok(s) => *s,
        Err(e) => e.downcast::<&str>().map(|s| s.to_string()).unwrap_or_default(),
    }
}
