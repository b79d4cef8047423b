//! Endpoint URL validation: any text is either refused or accepted as a URL whose
//! literal address, if any, the policy allows; never a panic.
#![no_main]

use herald::engine::egress::EgressPolicy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for allow_private in [false, true] {
        let policy = EgressPolicy { allow_private, ..EgressPolicy::default() };
        if let Ok(url) = policy.validate_endpoint_url(text) {
            assert!(matches!(url.scheme(), "http" | "https"));
            assert!(url.username().is_empty() && url.password().is_none());
            if let Some(url::Host::Ipv4(ip)) = url.host() {
                assert!(policy.allows(ip.into()));
            }
        }
    }
});
