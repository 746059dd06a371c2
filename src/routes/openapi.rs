//! `GET /api/openapi.json`: the OpenAPI 3 document of the contract as
//! implemented, compiled into the binary. A test keeps it in step with
//! `router::ROUTES`: every route documented, nothing documented that does
//! not exist.

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Ctx, Reply};

pub const DOCUMENT: &str = include_str!("openapi.json");

pub fn get(_app: &App, _ctx: &mut Ctx) -> Result<Reply, ApiError> {
    Ok(Reply::bytes(
        200,
        "application/json",
        DOCUMENT.as_bytes().to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::ROUTES;

    #[test]
    fn document_matches_the_router_exactly() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("valid JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().unwrap();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, ops) in paths {
            for method in ops.as_object().unwrap().keys() {
                documented.push((method.to_ascii_uppercase(), path.clone()));
            }
        }
        let mut routed: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p, _)| (m.as_str().to_string(), p.to_string()))
            .collect();
        documented.sort();
        routed.sort();
        assert_eq!(documented, routed, "openapi.json and router::ROUTES differ");
    }

    #[test]
    fn every_error_code_of_the_contract_is_in_the_error_schema() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        let codes = &doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
            ["code"]["enum"];
        for code in [
            "invalid_json",
            "validation_failed",
            "unauthorized",
            "origin_not_allowed",
            "csrf_token_invalid",
            "not_found",
            "method_not_allowed",
            "payload_too_large",
            "unsupported_media_type",
            "host_not_allowed",
            "rate_limited",
            "internal",
            "upstream_unavailable",
            "upstream_error",
            "server_busy",
            "upstream_timeout",
        ] {
            assert!(
                codes.as_array().unwrap().iter().any(|c| c == code),
                "{} missing",
                code
            );
        }
    }
}
