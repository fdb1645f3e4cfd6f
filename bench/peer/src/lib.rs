//! Nothing here: the package is its benchmark, `benches/peer_hit_path.rs`, which measures the
//! cache hit path of `aws_secretsmanager_caching` beside keyvault-invalidator's in one process.
//! See `README.md`.
