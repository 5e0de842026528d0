//! Examples whose values are checked against JAX: every `>>>` example of Nabla's "Automatic
//! Differentiation" page ported one to one ([`nabla_page_examples`]), and our own examples of
//! the rest of the API ([`more_examples`]). `examples/seed_examples.rs` prints them;
//! `tests/reference_examples.rs` compares them with `tests/fixtures/reference_examples.json`,
//! which `ci/gen_reference_examples.py` computes with JAX in float64.

mod more;
mod nabla_page;

pub use more::more_examples;
pub use nabla_page::nabla_page_examples;

/// A named result, printed as `name = value`; the name is the fixture's key.
pub type Named = (String, nabla::Tensor);
