//! Fixtures shared by the integration tests and the benches (both are separate crates, so this
//! lives in the library). Always compiled rather than behind a cargo feature, so that a plain
//! `cargo test` / `cargo bench` works without extra flags; it adds no dependencies and no
//! production code path calls it.

pub mod http;
pub mod kube;
pub mod mirror;
pub mod oci;
pub mod registry;
