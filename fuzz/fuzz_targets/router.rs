#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::http::Method;

fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data) {
        for m in [Method::Get, Method::Post, Method::Patch, Method::Delete, Method::Options] {
            let _ = portcullis::router::resolve(m, path);
        }
        let _ = portcullis::filters::host::host_name(path);
        let _ = portcullis::filters::origin::parse_origin(path);
    }
});
