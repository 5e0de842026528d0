//! `nabla-launch`: starts the ranks of a data-parallel nabla-rs job (see the crate's docs).

fn main() {
    std::process::exit(nabla_launch::launch::main());
}
