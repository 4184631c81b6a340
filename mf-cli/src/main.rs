//! The `mf` command.
fn main() {}
