//! Method + path -> route, with `{param}` segments. Unknown paths are 404
//! `not_found`; a known path with the wrong method is 405 with `Allow`.
//! `ROUTES` is the one table of endpoints: the OpenAPI test checks the
//! document against it.

use crate::error::ApiError;
use crate::http::Method;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    Ui,
    UiAsset,
    Health,
    HealthReady,
    Metrics,
    OpenApi,
    CsrfToken,
    ProjectsCreate,
    ProjectsList,
    ProjectGet,
    ProjectUpdate,
    ProjectDelete,
    ConversationsCreate,
    ConversationsList,
    ConversationGet,
    ConversationUpdate,
    ConversationDelete,
    MessagesList,
    Chat,
    ChatCompletions,
    Models,
}

/// Rate-limit class of a route (filter 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteClass {
    Chat,
    Other,
    /// Health checks and the UI's static files: never limited.
    Exempt,
}

impl Route {
    pub fn class(self) -> RouteClass {
        match self {
            Route::Chat | Route::ChatCompletions => RouteClass::Chat,
            Route::Health | Route::HealthReady | Route::Ui | Route::UiAsset | Route::Metrics => {
                RouteClass::Exempt
            }
            _ => RouteClass::Other,
        }
    }

    /// Routes that need no API key (filter 5).
    pub fn auth_exempt(self) -> bool {
        matches!(
            self,
            Route::Health
                | Route::HealthReady
                | Route::CsrfToken
                | Route::Ui
                | Route::UiAsset
                | Route::OpenApi
                | Route::Metrics
        )
    }

    /// Routes whose handler reads a JSON body.
    pub fn takes_body(self) -> bool {
        matches!(
            self,
            Route::ProjectsCreate
                | Route::ProjectUpdate
                | Route::ConversationsCreate
                | Route::ConversationUpdate
                | Route::Chat
                | Route::ChatCompletions
        )
    }

    /// A stable name for logs and metrics (the path pattern).
    pub fn name(self) -> &'static str {
        ROUTES
            .iter()
            .find(|(_, _, r)| *r == self)
            .map(|(_, p, _)| *p)
            .unwrap_or("?")
    }
}

/// Every endpoint: method, path pattern, route.
pub const ROUTES: &[(Method, &str, Route)] = &[
    (Method::Get, "/", Route::Ui),
    (Method::Get, "/ui/{asset}", Route::UiAsset),
    (Method::Get, "/health", Route::Health),
    (Method::Get, "/health/ready", Route::HealthReady),
    (Method::Get, "/metrics", Route::Metrics),
    (Method::Get, "/api/openapi.json", Route::OpenApi),
    (Method::Get, "/api/csrf-token", Route::CsrfToken),
    (Method::Post, "/api/projects", Route::ProjectsCreate),
    (Method::Get, "/api/projects", Route::ProjectsList),
    (Method::Get, "/api/projects/{id}", Route::ProjectGet),
    (Method::Patch, "/api/projects/{id}", Route::ProjectUpdate),
    (Method::Delete, "/api/projects/{id}", Route::ProjectDelete),
    (
        Method::Post,
        "/api/conversations",
        Route::ConversationsCreate,
    ),
    (Method::Get, "/api/conversations", Route::ConversationsList),
    (
        Method::Get,
        "/api/conversations/{id}",
        Route::ConversationGet,
    ),
    (
        Method::Patch,
        "/api/conversations/{id}",
        Route::ConversationUpdate,
    ),
    (
        Method::Delete,
        "/api/conversations/{id}",
        Route::ConversationDelete,
    ),
    (
        Method::Get,
        "/api/conversations/{id}/messages",
        Route::MessagesList,
    ),
    (Method::Post, "/api/chat", Route::Chat),
    (Method::Post, "/v1/chat/completions", Route::ChatCompletions),
    (Method::Get, "/v1/models", Route::Models),
];

/// Longest path we try to match; longer is simply not found.
const MAX_PATH_BYTES: usize = 2048;
/// Longest single path parameter.
const MAX_PARAM_BYTES: usize = 128;

fn match_pattern(pattern: &str, path: &str) -> Option<Vec<String>> {
    let mut params = Vec::new();
    let mut pat = pattern.split('/');
    let mut segs = path.split('/');
    loop {
        match (pat.next(), segs.next()) {
            (None, None) => return Some(params),
            (Some(p), Some(s)) if p.starts_with('{') => {
                if s.is_empty() || s.len() > MAX_PARAM_BYTES {
                    return None;
                }
                params.push(crate::http::percent_decode(s)?);
            }
            (Some(p), Some(s)) if p == s => {}
            _ => return None,
        }
    }
}

/// Finds the route. HEAD is served as GET. `OPTIONS` on a known path gives
/// `Ok(None)` (a CORS preflight, answered by the origin filter).
pub fn resolve(method: Method, path: &str) -> Result<Option<(Route, Vec<String>)>, ApiError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(ApiError::NotFound);
    }
    let method = if method == Method::Head {
        Method::Get
    } else {
        method
    };
    let mut allow: Vec<&'static str> = Vec::new();
    for (m, pattern, route) in ROUTES {
        if let Some(params) = match_pattern(pattern, path) {
            if *m == method {
                return Ok(Some((*route, params)));
            }
            allow.push(m.as_str());
        }
    }
    if allow.is_empty() {
        return Err(ApiError::NotFound);
    }
    if method == Method::Options {
        return Ok(None);
    }
    if allow.contains(&"GET") {
        allow.push("HEAD");
    }
    allow.push("OPTIONS");
    Err(ApiError::MethodNotAllowed { allow })
}

/// The methods allowed on `path` (for preflight answers).
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    ROUTES
        .iter()
        .filter(|(_, p, _)| match_pattern(p, path).is_some())
        .map(|(m, _, _)| m.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table() {
        let ok = [
            (Method::Get, "/health", Route::Health, vec![]),
            (Method::Head, "/health", Route::Health, vec![]),
            (
                Method::Get,
                "/api/projects/abc",
                Route::ProjectGet,
                vec!["abc"],
            ),
            (
                Method::Delete,
                "/api/projects/a%20b",
                Route::ProjectDelete,
                vec!["a b"],
            ),
            (
                Method::Get,
                "/api/conversations/c1/messages",
                Route::MessagesList,
                vec!["c1"],
            ),
            (
                Method::Post,
                "/v1/chat/completions",
                Route::ChatCompletions,
                vec![],
            ),
        ];
        for (m, p, r, params) in ok {
            let (route, got) = resolve(m, p).unwrap().unwrap();
            assert_eq!(route, r, "{}", p);
            assert_eq!(got, params, "{}", p);
        }
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
        for p in [
            "/nope",
            "/api/projects/",
            "/api/projects/a/b",
            "//health",
            "/health/",
            "",
        ] {
            assert_eq!(resolve(Method::Get, p), Err(ApiError::NotFound), "{:?}", p);
        }
        match resolve(Method::Put, "/api/projects/x") {
            Err(ApiError::MethodNotAllowed { allow }) => {
                assert!(
                    allow.contains(&"GET") && allow.contains(&"PATCH") && allow.contains(&"DELETE")
                );
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert_eq!(resolve(Method::Options, "/api/projects").unwrap(), None);
        assert_eq!(
            resolve(Method::Get, &"/a".repeat(2000)),
            Err(ApiError::NotFound)
        );
        assert_eq!(
            resolve(Method::Get, "/api/projects/%zz"),
            Err(ApiError::NotFound)
        );
    }

    #[test]
    fn every_route_is_reachable_exactly_once() {
        for (m, p, r) in ROUTES {
            let concrete = p.replace("{id}", "x1").replace("{asset}", "app.js");
            assert_eq!(resolve(*m, &concrete).unwrap().unwrap().0, *r);
        }
    }
}
