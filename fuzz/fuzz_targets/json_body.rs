#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::http::{Ctx, Method};

fuzz_target!(|data: &[u8]| {
    let mut ctx = Ctx::new(Method::Post, "/x", "127.0.0.1".parse().unwrap()).with_header("content-type", "application/json");
    ctx.body = data.to_vec();
    if let Ok(map) = portcullis::json_body::object(&ctx) {
        let _ = portcullis::json_body::reject_unknown(&map, &["name", "description"]);
        let _ = portcullis::json_body::opt_str(&map, "name", 1, 200);
    }
});
