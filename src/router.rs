//! The route table and path matching. `ROUTES` is the only definition of
//! an endpoint: one row gives its method, path pattern, handler, access,
//! rate-limit class, request body and what it answers. The `Route` enum,
//! `routes::dispatch`, the auth exemptions (filter 5), the rate-limit class
//! (filter 6), which routes read a body, the metrics labels and the OpenAPI
//! document (`routes::openapi`) are all derived from it.
//!
//! Matching: method + path -> route, with `{param}` segments. Unknown paths
//! are 404 `not_found`; a known path with the wrong method is 405 with
//! `Allow`; OPTIONS on a known path is a CORS preflight.

use crate::app::App;
use crate::db::page;
use crate::error::ApiError;
use crate::http::{Ctx, Method, Reply};
use crate::routes::fields::{Body, Field};
use crate::routes::{chat, conversations, csrf, health, metrics, openai, openapi, projects};
use crate::routes::{ready, session, ui, usage, users};

/// A handler: the filtered request in, a reply or a contract error out.
pub type Handler = fn(&App, &mut Ctx) -> Result<Reply, ApiError>;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone: no key needed (filter 5 lets it through).
    Public,
    /// A valid API key (`Authorization: Bearer`) in auth mode `api_key`.
    Key,
    /// As `Key`, and the caller's role is `admin` (else 403 `forbidden`,
    /// `routes::dispatch`).
    Admin,
    /// Loopback clients and trusted proxies only, without a key; anyone
    /// else gets 404 so the route is not advertised (`routes::dispatch`).
    Local,
}

impl Access {
    /// Whether the caller must authenticate (filter 5).
    pub const fn needs_key(self) -> bool {
        matches!(self, Access::Key | Access::Admin)
    }
}

/// Rate-limit class of a route (filter 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteClass {
    Chat,
    Other,
    /// Health checks, metrics and the UI's static files: never limited.
    Exempt,
}

/// What a route answers when it succeeds (for the document).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Answer {
    /// JSON of the named schema (`routes::openapi` components).
    Json(u16, &'static str),
    /// A page of the named schema: `{"items": [...], "next_cursor"}`.
    Page(&'static str),
    /// No body.
    Empty(u16),
    /// JSON of the named schema, or a `text/event-stream` of these event
    /// names (`message` for events without an `event:` line) when the body
    /// asks for `"stream": true`.
    JsonOrStream(&'static str, &'static [&'static str]),
    /// The chat page or one of its files (`ETag`, 304 when unchanged).
    UiFile,
    /// Plain text (Prometheus exposition format).
    Text,
    /// `GET /health/ready`: 200 or 503 with the `Ready` schema.
    Ready,
}

/// A query parameter a route reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Query {
    /// `?limit=` of a paginated list (`db::page`).
    Limit,
    /// `?cursor=` of this list; empty means none.
    Cursor(page::Kind),
    /// A string parameter with the rules of this field.
    Field(Field),
}

/// One row of the route table.
#[derive(Clone, Copy, Debug)]
pub struct RouteDef {
    pub method: Method,
    /// Segments are literal or `{name}` (one non-empty segment).
    pub path: &'static str,
    pub handler: Handler,
    pub access: Access,
    pub class: RouteClass,
    /// The JSON body the handler reads (content type checked, 415).
    pub body: Option<&'static Body>,
    pub query: &'static [Query],
    pub answer: Answer,
    /// Calls the upstream, so may answer 502 / 504.
    pub upstream: bool,
    /// One line for the document.
    pub summary: &'static str,
}

impl RouteDef {
    const fn new(method: Method, path: &'static str, handler: Handler) -> RouteDef {
        RouteDef {
            method,
            path,
            handler,
            access: Access::Key,
            class: RouteClass::Other,
            body: None,
            query: &[],
            answer: Answer::Empty(204),
            upstream: false,
            summary: "",
        }
    }
    const fn access(self, access: Access) -> RouteDef {
        RouteDef { access, ..self }
    }
    const fn class(self, class: RouteClass) -> RouteDef {
        RouteDef { class, ..self }
    }
    const fn body(self, body: &'static Body) -> RouteDef {
        RouteDef {
            body: Some(body),
            ..self
        }
    }
    const fn query(self, query: &'static [Query]) -> RouteDef {
        RouteDef { query, ..self }
    }
    const fn answers(self, answer: Answer) -> RouteDef {
        RouteDef { answer, ..self }
    }
    const fn upstream(self) -> RouteDef {
        RouteDef {
            upstream: true,
            ..self
        }
    }
    const fn doc(self, summary: &'static str) -> RouteDef {
        RouteDef { summary, ..self }
    }
}

const fn get(path: &'static str, handler: Handler) -> RouteDef {
    RouteDef::new(Method::Get, path, handler)
}
const fn post(path: &'static str, handler: Handler) -> RouteDef {
    RouteDef::new(Method::Post, path, handler)
}
const fn patch(path: &'static str, handler: Handler) -> RouteDef {
    RouteDef::new(Method::Patch, path, handler)
}
const fn delete(path: &'static str, handler: Handler) -> RouteDef {
    RouteDef::new(Method::Delete, path, handler)
}

/// Defines `Route` (one variant per row, in table order) and `ROUTES`.
macro_rules! route_table {
    ($($name:ident = $row:expr,)*) => {
        /// An endpoint; its row is `ROUTES[route as usize]`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Route {
            $($name,)*
        }

        impl Route {
            /// Every route, in table order.
            pub const ALL: &'static [Route] = &[$(Route::$name,)*];
        }

        /// The route table.
        pub const ROUTES: &[RouteDef] = &[$($row,)*];
    };
}

const PAGE_OF_PROJECTS: &[Query] = &[Query::Limit, Query::Cursor(page::Kind::Projects)];
const PAGE_OF_CONVERSATIONS: &[Query] = &[
    Query::Field(conversations::LIST_PROJECT_ID),
    Query::Limit,
    Query::Cursor(page::Kind::Conversations),
];
const PAGE_OF_MESSAGES: &[Query] = &[Query::Limit, Query::Cursor(page::Kind::Messages)];
const ADMIN_KEYS_QUERY: &[Query] = &[Query::Field(users::ADMIN_KEYS_USER_ID)];
const USAGE_QUERY: &[Query] = &[
    Query::Field(usage::SINCE),
    Query::Field(usage::UNTIL),
    Query::Field(usage::GROUP_BY),
];
const ADMIN_USAGE_QUERY: &[Query] = &[
    Query::Field(usage::SINCE),
    Query::Field(usage::UNTIL),
    Query::Field(usage::GROUP_BY),
    Query::Field(usage::USER_ID),
];

use Access::{Admin, Local, Public};
use RouteClass::{Chat, Exempt};

route_table! {
    Ui = get("/", ui::index).access(Public).class(Exempt).answers(Answer::UiFile)
        .doc("The built-in chat page (when `ui = true`; else 404)"),
    UiAsset = get("/ui/{asset}", ui::asset).access(Public).class(Exempt).answers(Answer::UiFile)
        .doc("A file of the chat page (when `ui = true`; else 404)"),
    Favicon = get("/favicon.ico", ui::favicon).access(Public).class(Exempt).answers(Answer::UiFile)
        .doc("The chat page's icon, cached for a day (when `ui = true`; else 404)"),
    Health = get("/health", health::live).access(Public).class(Exempt)
        .answers(Answer::Json(200, "Health"))
        .doc("Liveness; no database"),
    HealthReady = get("/health/ready", ready::ready).access(Public).class(Exempt)
        .answers(Answer::Ready)
        .doc("Readiness: the database (bounded check, 503 when it fails) and the upstream"),
    Metrics = get("/metrics", metrics::get).access(Local).class(Exempt).answers(Answer::Text)
        .doc("Prometheus metrics; loopback and trusted proxies only, else 404"),
    OpenApi = get("/api/openapi.json", openapi::get).access(Public)
        .answers(Answer::Json(200, "OpenApi"))
        .doc("This document"),
    CsrfToken = get("/api/csrf-token", csrf::token).access(Public)
        .answers(Answer::Json(200, "CsrfToken"))
        .doc("A token for `X-CSRF-Token`"),
    ProjectsCreate = post("/api/projects", projects::create).body(&projects::CREATE)
        .answers(Answer::Json(201, "Project"))
        .doc("Create a project"),
    ProjectsList = get("/api/projects", projects::list).query(PAGE_OF_PROJECTS)
        .answers(Answer::Page("Project"))
        .doc("Projects, newest first"),
    ProjectGet = get("/api/projects/{id}", projects::get)
        .answers(Answer::Json(200, "Project"))
        .doc("One project"),
    ProjectUpdate = patch("/api/projects/{id}", projects::update).body(&projects::UPDATE)
        .answers(Answer::Json(200, "Project"))
        .doc("Change a project (JSON merge patch)"),
    ProjectDelete = delete("/api/projects/{id}", projects::delete)
        .doc("Delete a project with its conversations and messages"),
    ConversationsCreate = post("/api/conversations", conversations::create)
        .body(&conversations::CREATE)
        .answers(Answer::Json(201, "Conversation"))
        .doc("Create a conversation"),
    ConversationsList = get("/api/conversations", conversations::list)
        .query(PAGE_OF_CONVERSATIONS)
        .answers(Answer::Page("Conversation"))
        .doc("Conversations, newest first"),
    ConversationGet = get("/api/conversations/{id}", conversations::get)
        .answers(Answer::Json(200, "Conversation"))
        .doc("One conversation"),
    ConversationUpdate = patch("/api/conversations/{id}", conversations::update)
        .body(&conversations::UPDATE)
        .answers(Answer::Json(200, "Conversation"))
        .doc("Change a conversation (JSON merge patch)"),
    ConversationDelete = delete("/api/conversations/{id}", conversations::delete)
        .doc("Delete a conversation and its messages"),
    MessagesList = get("/api/conversations/{id}/messages", conversations::messages)
        .query(PAGE_OF_MESSAGES)
        .answers(Answer::Page("Message"))
        .doc("A conversation's messages, oldest first"),
    Chat = post("/api/chat", chat::chat).class(Chat).body(&chat::BODY)
        .answers(Answer::JsonOrStream("ChatReply", &["start", "delta", "done", "error"])).upstream()
        .doc("One chat turn: stores the user message, asks the upstream, stores the answer"),
    ChatCompletions = post("/v1/chat/completions", openai::chat_completions).class(Chat)
        .body(&openai::CHAT.body)
        .answers(Answer::JsonOrStream("ChatCompletion", &["message"])).upstream()
        .doc("OpenAI-compatible chat completions relay, streaming and not"),
    Completions = post("/v1/completions", openai::completions).class(Chat)
        .body(&openai::COMPLETIONS.body)
        .answers(Answer::JsonOrStream("Completion", &["message"])).upstream()
        .doc("OpenAI-compatible text completions relay, streaming and not"),
    Embeddings = post("/v1/embeddings", openai::embeddings).class(Chat)
        .body(&openai::EMBEDDINGS.body)
        .answers(Answer::Json(200, "EmbeddingList")).upstream()
        .doc("OpenAI-compatible embeddings relay"),
    Responses = post("/v1/responses", openai::responses).class(Chat)
        .body(&openai::RESPONSES.body)
        .answers(Answer::JsonOrStream("Response", &["message"])).upstream()
        .doc("OpenAI-compatible Responses API relay, streaming (named events) and not"),
    SessionCreate = post("/api/session", session::sign_in).access(Public).body(&session::SIGN_IN)
        .answers(Answer::Json(200, "SignedIn"))
        .doc("Sign in with name and password: sets the `portcullis_session` cookie"),
    SessionDelete = delete("/api/session", session::sign_out)
        .doc("Sign out: the session ends at once (with a key: nothing to end)"),
    Me = get("/api/me", users::me).answers(Answer::Json(200, "Me"))
        .doc("Who the caller is, and how they authenticated"),
    KeysList = get("/api/keys", users::keys_list).answers(Answer::Json(200, "KeyList"))
        .doc("The caller's API keys (never the keys themselves)"),
    KeysCreate = post("/api/keys", users::keys_create).body(&users::KEY_CREATE)
        .answers(Answer::Json(201, "KeyCreated"))
        .doc("A new API key for the caller, shown once"),
    KeyDelete = delete("/api/keys/{id}", users::keys_delete)
        .doc("Revoke one of the caller's keys at once"),
    AdminUsersList = get("/api/admin/users", users::admin_users_list).access(Admin)
        .answers(Answer::Json(200, "UserList"))
        .doc("Every user (admin)"),
    AdminUsersCreate = post("/api/admin/users", users::admin_users_create).access(Admin)
        .body(&users::USER_CREATE).answers(Answer::Json(201, "User"))
        .doc("Create a user (admin)"),
    AdminUserUpdate = patch("/api/admin/users/{id}", users::admin_users_update).access(Admin)
        .body(&users::USER_UPDATE).answers(Answer::Json(200, "User"))
        .doc("Change a user's role or disable them; effective on their next request (admin)"),
    AdminUserDelete = delete("/api/admin/users/{id}", users::admin_users_delete).access(Admin)
        .doc("Disable a user, keeping their data (admin)"),
    AdminKeysList = get("/api/admin/keys", users::admin_keys_list).access(Admin)
        .query(ADMIN_KEYS_QUERY).answers(Answer::Json(200, "KeyList"))
        .doc("One user's API keys (admin)"),
    AdminKeysCreate = post("/api/admin/keys", users::admin_keys_create).access(Admin)
        .body(&users::ADMIN_KEY_CREATE).answers(Answer::Json(201, "KeyCreated"))
        .doc("A new API key for any user, shown once (admin)"),
    AdminKeyDelete = delete("/api/admin/keys/{id}", users::admin_keys_delete).access(Admin)
        .doc("Revoke any user's key at once (admin)"),
    Usage = get("/api/usage", usage::own).query(USAGE_QUERY)
        .answers(Answer::Json(200, "UsageReport"))
        .doc("The caller's token usage, grouped by day, model or key"),
    AdminUsage = get("/api/admin/usage", usage::admin).access(Admin).query(ADMIN_USAGE_QUERY)
        .answers(Answer::Json(200, "UsageReport"))
        .doc("Everyone's token usage (or one user's), grouped by day, model, key or user (admin)"),
    Models = get("/v1/models", openai::models)
        .answers(Answer::Json(200, "ModelList")).upstream()
        .doc("Models in OpenAI shape: the upstream's list, or the configured model"),
    Model = get("/v1/models/{*id}", openai::model)
        .answers(Answer::Json(200, "Model")).upstream()
        .doc("One model of `/v1/models` (ids may hold `/`); 404 when not listed"),
}

// Table order is enum order, so `Route::def` is an index.
const _: () = assert!(Route::ALL.len() == ROUTES.len());

impl Route {
    /// This route's row of the table.
    pub fn def(self) -> &'static RouteDef {
        &ROUTES[self as usize]
    }

    pub fn class(self) -> RouteClass {
        self.def().class
    }

    /// Routes that need no API key (filter 5).
    pub fn auth_exempt(self) -> bool {
        !self.def().access.needs_key()
    }

    /// Routes whose handler reads a JSON body.
    pub fn takes_body(self) -> bool {
        self.def().body.is_some()
    }

    /// A stable name for logs and metrics (the path pattern).
    pub fn name(self) -> &'static str {
        self.def().path
    }
}

/// Longest path we try to match; longer is simply not found.
const MAX_PATH_BYTES: usize = 2048;
/// Longest single path parameter.
const MAX_PARAM_BYTES: usize = 128;

fn match_pattern(pattern: &str, path: &str) -> Option<Vec<String>> {
    // Every request is tried against the table in order, so most tries
    // fail: reject on the literal part before splitting anything.
    match pattern.find('{') {
        None => return (pattern == path).then(Vec::new),
        Some(i) if !path.starts_with(&pattern[..i]) => return None,
        Some(_) => {}
    }
    let mut params = Vec::new();
    let mut pat = pattern.split('/');
    let mut segs = path.split('/');
    loop {
        match (pat.next(), segs.next()) {
            (None, None) => return Some(params),
            // `{*name}` (last in a pattern) takes the rest of the path,
            // slashes included: model ids such as `org/model`.
            (Some(p), Some(s)) if p.starts_with("{*") => {
                // `s` is a piece of `path`: the rest starts where it does.
                let rest = &path[s.as_ptr() as usize - path.as_ptr() as usize..];
                if s.is_empty() || rest.len() > MAX_PARAM_BYTES {
                    return None;
                }
                params.push(crate::http::percent_decode(rest)?);
                return Some(params);
            }
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
    for (def, route) in ROUTES.iter().zip(Route::ALL) {
        if let Some(params) = match_pattern(def.path, path) {
            if def.method == method {
                return Ok(Some((*route, params)));
            }
            allow.push(def.method.as_str());
        }
    }
    if allow.is_empty() {
        // An OpenAI path we do not relay says so (a bare "not found" reads
        // as "model not found" in some clients).
        if path.starts_with("/v1/") {
            return Err(ApiError::unsupported_path(path));
        }
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
        .filter(|d| match_pattern(d.path, path).is_some())
        .map(|d| d.method.as_str())
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

    /// What filters 5 and 6 and the body reader derive from the table
    /// (the lists that used to be written out by hand).
    #[test]
    fn predicates_follow_the_table() {
        use Route::*;
        for r in Route::ALL {
            let exempt = matches!(r, Health | HealthReady | Ui | UiAsset | Favicon | Metrics);
            let chat = matches!(
                r,
                Chat | ChatCompletions | Completions | Embeddings | Responses
            );
            let want = match (exempt, chat) {
                (true, _) => RouteClass::Exempt,
                (_, true) => RouteClass::Chat,
                _ => RouteClass::Other,
            };
            assert_eq!(r.class(), want, "{:?}", r);
            let no_key = matches!(
                r,
                Health
                    | HealthReady
                    | CsrfToken
                    | Ui
                    | UiAsset
                    | Favicon
                    | OpenApi
                    | Metrics
                    | SessionCreate
            );
            assert_eq!(r.auth_exempt(), no_key, "{:?}", r);
            let body = matches!(
                r,
                ProjectsCreate
                    | ProjectUpdate
                    | ConversationsCreate
                    | ConversationUpdate
                    | Chat
                    | ChatCompletions
                    | Completions
                    | Embeddings
                    | Responses
                    | KeysCreate
                    | SessionCreate
                    | AdminUsersCreate
                    | AdminUserUpdate
                    | AdminKeysCreate
            );
            assert_eq!(r.takes_body(), body, "{:?}", r);
        }
        assert_eq!(Metrics.def().access, Access::Local);
        assert_eq!(Route::ALL.len(), ROUTES.len());
    }

    #[test]
    fn every_route_is_reachable_exactly_once() {
        for (d, r) in ROUTES.iter().zip(Route::ALL) {
            let concrete = d.path.replace("{id}", "x1").replace("{asset}", "app.js");
            assert_eq!(resolve(d.method, &concrete).unwrap().unwrap().0, *r);
            assert_eq!(r.def().path, d.path);
        }
    }
}
