#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::filters::client_ip::{resolve, TrustedProxies};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let trusted = TrustedProxies::parse(&["127.0.0.1".into(), "10.0.0.0/8".into()]).unwrap();
        let headers: Vec<&str> = s.split('\n').collect();
        let untrusted = "8.8.8.8".parse().unwrap();
        assert_eq!(resolve(untrusted, &headers, &trusted), untrusted);
        let _ = resolve("127.0.0.1".parse().unwrap(), &headers, &trusted);
    }
});
