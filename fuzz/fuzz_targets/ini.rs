#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = portcullis::config::parse_ini(&text, std::path::Path::new("fuzz.ini"));
});
