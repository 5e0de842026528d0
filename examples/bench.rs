//! The benchmark table: our timings of the reference cases next to JAX (jit and eager) and
//! PyTorch (eager) measured in the same invocation on the same machine.
//!
//! Run: `ci/bench` (sets up the JAX venv when missing), or directly
//! `cargo run --release --example bench -- [--json out.json] [--python .venv-jax/bin/python]`.
//! Cases, shapes and functions are those of `ci/jax_baseline.py`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;

use clap::Parser;

#[path = "timing/mod.rs"]
mod timing;
use nabla as nb;
use nb::{DType, Rng, Tensor};
use timing::{median_ms, per_call_us};

/// Benchmark nabla-rs against JAX and PyTorch.
#[derive(Parser, Debug)]
struct Args {
    /// Write the rows as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Python with JAX (and optionally PyTorch) installed.
    #[arg(long, default_value = ".venv-jax/bin/python")]
    python: PathBuf,
    /// The JAX reference script.
    #[arg(long, default_value = "ci/jax_baseline.py")]
    jax_script: PathBuf,
    /// The PyTorch reference script.
    #[arg(long, default_value = "ci/torch_baseline.py")]
    torch_script: PathBuf,
    /// Only our own cases.
    #[arg(long)]
    ours_only: bool,
}

/// The 784-512-512-10 MLP of the reference: tanh, then relu, log-softmax cross-entropy.
fn mlp_loss(params: &[(Tensor, Tensor); 3], x: &Tensor, y: &Tensor) -> Tensor {
    let [(w1, b1), (w2, b2), (w3, b3)] = params;
    let h = (x.matmul(w1) + b1).tanh();
    let h = (h.matmul(w2) + b2).relu();
    let logp = (h.matmul(w3) + b3).log_softmax(-1);
    -(y * logp).sum(-1, false).mean_all()
}

/// A function of one tensor (the Jacobian cases, eager and under jit).
type TensorFn<'a> = dyn Fn(&Tensor) -> Tensor + 'a;

/// A row of ours: case, system, value, unit.
type Row = (&'static str, &'static str, f64, &'static str);

fn ours() -> Vec<(String, String, String, f64)> {
    let mut rng = Rng::new(0);
    let mut layer = |i: usize, o: usize| {
        (
            rng.normal(&[i, o], 0.0, 1.0 / (i as f64).sqrt(), DType::F32),
            Tensor::zeros(&[o], DType::F32),
        )
    };
    let params = [layer(784, 512), layer(512, 512), layer(512, 10)];
    let mut rng = Rng::new(1);
    let x = rng.normal(&[128, 784], 0.0, 1.0, DType::F32);
    let labels = Tensor::from_vec((0..128).map(|i| (i * 7 % 10) as i64).collect(), &[128]);
    let y = nb::one_hot(&labels, 10, DType::F32);
    let mut rows: Vec<Row> = Vec::new();
    let vg = nb::value_and_grad(|p: &[(Tensor, Tensor); 3]| mlp_loss(p, &x, &y));
    let vg_jit = nb::jit(&vg);
    for (system, step) in [("nabla-rs", &vg as &dyn Fn(&_) -> _), ("nabla-rs jit", &vg_jit)] {
        rows.push((
            "mlp_step_b128",
            system,
            median_ms(10, 200, || {
                black_box(step(&params));
            }),
            "ms",
        ));
    }
    let g = nb::grad(|x: &Tensor| (x.sin() * x + x.square()).sum_all());
    let g_jit = nb::jit(&g);
    let xs = Tensor::arange(0.0, 4.0, 1.0, DType::F32);
    for (system, step) in [("nabla-rs", &g as &dyn Fn(&Tensor) -> Tensor), ("nabla-rs jit", &g_jit)] {
        rows.push((
            "tiny_grad",
            system,
            per_call_us(1000, 5, || {
                black_box(step(&xs));
            }),
            "us/call",
        ));
    }
    let n = 256;
    let w = rng.normal(&[n, n], 0.0, 1.0 / (n as f64).sqrt(), DType::F32);
    let xv = rng.normal(&[n], 0.0, 1.0, DType::F32);
    let f = |x: &Tensor| w.matmul(x).tanh();
    let jf = nb::jacfwd(f);
    let jr = nb::jacrev(f);
    let (jf_jit, jr_jit) = (nb::jit(&jf), nb::jit(&jr));
    let jacobians: [(&str, &str, &TensorFn<'_>); 4] = [
        ("jacfwd_256", "nabla-rs", &jf),
        ("jacfwd_256", "nabla-rs jit", &jf_jit),
        ("jacrev_256", "nabla-rs", &jr),
        ("jacrev_256", "nabla-rs jit", &jr_jit),
    ];
    for (case, system, jac) in jacobians {
        rows.push((
            case,
            system,
            median_ms(10, 300, || {
                black_box(jac(&xv));
            }),
            "ms",
        ));
    }
    let a = rng.normal(&[1024, 1024], 0.0, 1.0, DType::F32);
    let b = rng.normal(&[1024, 1024], 0.0, 1.0, DType::F32);
    rows.push((
        "matmul_1024",
        "nabla-rs",
        median_ms(5, 50, || {
            black_box(a.matmul(&b));
        }),
        "ms",
    ));
    rows.into_iter()
        .map(|(c, s, v, u)| (c.to_string(), s.to_string(), u.to_string(), v))
        .collect()
}

/// Runs a reference script that writes JSON rows `{case, system, unit, value}`.
fn reference(python: &PathBuf, script: &PathBuf) -> Result<Vec<(String, String, String, f64)>, String> {
    if !script.exists() {
        return Err(format!("{} not found", script.display()));
    }
    let out = std::env::temp_dir().join(format!(
        "nabla-bench-{}-{}.json",
        std::process::id(),
        script.file_stem().and_then(|s| s.to_str()).unwrap_or("ref")
    ));
    let status = Command::new(python)
        .arg(script)
        .arg("--json")
        .arg(&out)
        .status()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !status.success() {
        return Err(format!(
            "{} {} exited with {status}",
            python.display(),
            script.display()
        ));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let _ = std::fs::remove_file(&out);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r["case"].as_str().unwrap_or("?").to_string(),
                r["system"].as_str().unwrap_or("?").to_string(),
                r["unit"].as_str().unwrap_or("?").to_string(),
                r["value"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect())
}

fn main() {
    let args = Args::parse();
    let mut rows = ours();
    if !args.ours_only {
        for script in [&args.jax_script, &args.torch_script] {
            match reference(&args.python, script) {
                Ok(r) => rows.extend(r),
                Err(e) => eprintln!("bench: skipping {}: {e}", script.display()),
            }
        }
    }
    let mut table: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let mut units: BTreeMap<String, String> = BTreeMap::new();
    for (case, system, unit, value) in &rows {
        table.entry(case.clone()).or_default().insert(system.clone(), *value);
        units.insert(case.clone(), unit.clone());
    }
    let systems = ["nabla-rs", "nabla-rs jit", "jax.jit", "jax eager", "torch eager"];
    println!(
        "{:<14} {:>8} {:>11} {:>13} {:>11} {:>11} {:>12} {:>13} {:>13} {:>11}",
        "case",
        "unit",
        systems[0],
        systems[1],
        systems[2],
        systems[3],
        systems[4],
        "eager/jax.jit",
        "ours jit/jax.jit",
        "eager/torch"
    );
    let cell = |v: Option<&f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    let order = ["mlp_step_b128", "tiny_grad", "jacfwd_256", "jacrev_256", "matmul_1024"];
    for case in order {
        let Some(r) = table.get(case) else { continue };
        let ratio = |ours: &str, theirs: &str| match (r.get(ours), r.get(theirs)) {
            (Some(a), Some(b)) => format!("{:.2}", a / b),
            _ => "-".to_string(),
        };
        println!(
            "{:<14} {:>8} {:>11} {:>13} {:>11} {:>11} {:>12} {:>13} {:>13} {:>11}",
            case,
            units[case],
            cell(r.get(systems[0])),
            cell(r.get(systems[1])),
            cell(r.get(systems[2])),
            cell(r.get(systems[3])),
            cell(r.get(systems[4])),
            ratio("nabla-rs", "jax.jit"),
            ratio("nabla-rs jit", "jax.jit"),
            ratio("nabla-rs", "torch eager"),
        );
    }
    println!("(ratios below 1 mean nabla-rs is faster)");
    if let Some(path) = &args.json {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|(c, s, u, v)| serde_json::json!({"case": c, "system": s, "unit": u, "value": v}))
            .collect();
        std::fs::write(path, serde_json::to_string_pretty(&json).expect("serialisable"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}
