#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::http::{Ctx, Method};

fuzz_target!(|data: &[u8]| {
    let mut ctx = Ctx::new(Method::Post, "/x", "127.0.0.1".parse().unwrap()).with_header("content-type", "application/json");
    ctx.body = data.to_vec();
    if let Ok(fields) = portcullis::json_body::object(&ctx, &["name", "description"]) {
        let _ = fields.reject_unknown();
        let _ = fields.opt_str("name", 1, 200);
    }
});
