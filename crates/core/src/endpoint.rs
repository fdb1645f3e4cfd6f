//! Whether an endpoint stays on this machine: the test every transport makes before it accepts a
//! plain-text (non-TLS) endpoint without an opt-in named for it.

/// Whether `host` (a URL's host: a name, an IPv4 address, or an IPv6 address with or without
/// brackets) is this machine's loopback: `localhost` (any case) or a loopback address.
///
/// ```
/// use keyvault_invalidator_core::is_loopback_host;
///
/// assert!(is_loopback_host("127.0.0.1") && is_loopback_host("[::1]") && is_loopback_host("LOCALHOST"));
/// assert!(!is_loopback_host("10.0.0.1") && !is_loopback_host("localhost.example.net"));
/// ```
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
