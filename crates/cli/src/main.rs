//! The `socketcluster` command.
#![forbid(unsafe_code)]

fn main() {}
