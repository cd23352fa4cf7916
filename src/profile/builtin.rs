//! Built-in profiles, embedded from `profiles/` at build time.

const BUILTIN: &[(&str, &str)] = &[
    ("local-3", include_str!("../../profiles/local-3.yaml")),
    ("local-ha", include_str!("../../profiles/local-ha.yaml")),
    ("gpu-dev", include_str!("../../profiles/gpu-dev.yaml")),
    ("gpu-1000", include_str!("../../profiles/gpu-1000.yaml")),
];

/// The profile used when none is given.
pub const DEFAULT: &str = "local-3";

pub fn get(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

pub fn names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(n, _)| *n).collect()
}
