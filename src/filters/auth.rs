//! Filter 5: API-key authentication.
//!
//! In `api_key` mode every route whose row in the route table
//! (`router::ROUTES`) has `Access::Key` needs `Authorization: Bearer
//! pcs_...`; the others are `Route::auth_exempt` (OPTIONS never gets here). The key is checked for shape, hashed
//! (SHA-256) and looked up by hash; the stored hash is compared in constant
//! time. Missing, malformed, unknown and revoked keys all answer the same
//! 401 `unauthorized`; the reason goes to the audit trail (aggregated per
//! client per minute), never the key. Valid keys are cached behind the key
//! stamp (`db::keys::KeyCache`), so a key revoked with `portcullis keys
//! revoke` is still refused on its next request.
//!
//! Failed keys are limited per client address (IPv6 per /64): each failure
//! takes a token from the address's bucket (`Auth::failures`)
//! (`auth.max_failures_per_minute`, refilled continuously); an address
//! whose bucket is empty gets 429 `rate_limited` with `Retry-After` and the
//! `"auth_failures"` rate-limit fields before its key is read or looked up,
//! so a key sprayer costs neither a hash nor a SQLite query.

use std::time::Instant;

use crate::config::AuthMode;
use crate::db::keys::{self, KeyLookup};
use crate::error::ApiError;
use crate::filters::client_ip;
use crate::filters::rate_limit::{Class, Identity, Key, Limiter};
use crate::http::Ctx;

/// Where presented keys are looked up (`db::Db` in the server; a map in
/// tests).
pub trait KeyStore {
    fn lookup(&self, presented: &str) -> Result<KeyLookup, ApiError>;
}

impl KeyStore for crate::db::Db {
    // The storage error converts to the contract's here (`From` in error.rs).
    fn lookup(&self, presented: &str) -> Result<KeyLookup, ApiError> {
        Ok(self.lookup_key(presented)?)
    }
}

/// Where session tokens are looked up (`db::Db` in the server).
pub trait SessionStore {
    fn lookup_session(
        &self,
        token: &str,
        idle_ms: i64,
    ) -> Result<crate::db::sessions::SessionLookup, ApiError>;
}

impl SessionStore for crate::db::Db {
    fn lookup_session(
        &self,
        token: &str,
        idle_ms: i64,
    ) -> Result<crate::db::sessions::SessionLookup, ApiError> {
        Ok(crate::db::store::Sessions::lookup_session(
            &**self, token, idle_ms,
        )?)
    }
}

/// The session cookie's name (API.md).
pub const SESSION_COOKIE: &str = "portcullis_session";

/// Where failed authentications are reported (the audit trail, aggregated
/// per client per minute, and the metrics, in the server).
pub trait FailureLog {
    fn auth_failed(&self, ctx: &Ctx, reason: &'static str, key_id: Option<&str>);
}

/// What authentication uses, and nothing else.
pub struct Auth<'a> {
    pub mode: AuthMode,
    /// Who every request acts for in auth mode `none` (the built-in
    /// `local` admin).
    pub local: Option<&'a crate::db::Principal>,
    pub keys: &'a dyn KeyStore,
    pub sessions: &'a dyn SessionStore,
    /// `auth.session_idle_s`, in milliseconds.
    pub session_idle_ms: i64,
    /// Failed authentications per client address.
    pub failures: &'a Limiter,
    pub log: &'a dyn FailureLog,
}

/// Why a request was refused (for the audit trail).
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    Missing,
    Malformed,
}

/// The presented key: exactly one `Authorization` header, scheme `Bearer`
/// (any case), a well-formed key.
fn presented_key(ctx: &Ctx) -> Result<&str, Refusal> {
    let values = ctx.header_all("authorization");
    let value = match values.as_slice() {
        [] => return Err(Refusal::Missing),
        [one] => *one,
        _ => return Err(Refusal::Malformed),
    };
    let (scheme, key) = value.trim().split_once(' ').ok_or(Refusal::Malformed)?;
    let key = key.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || !keys::well_formed(key) {
        return Err(Refusal::Malformed);
    }
    Ok(key)
}

/// The client address's failure bucket (IPv6 per /64, as the rate limiter).
fn failure_key(ctx: &Ctx) -> Key {
    Key {
        id: Identity::Addr(client_ip::bucket_key(ctx.client)),
        class: Class::AuthFailures,
    }
}

impl Auth<'_> {
    /// Counts one failed authentication against the client address (also
    /// for the sign-in route, once it exists) and reports it.
    pub fn count_failure(
        &self,
        ctx: &Ctx,
        reason: &'static str,
        key_id: Option<&str>,
        now: Instant,
    ) {
        self.failures.take(failure_key(ctx), now);
        self.log.auth_failed(ctx, reason, key_id);
    }

    fn refuse(
        &self,
        ctx: &Ctx,
        reason: &'static str,
        key_id: Option<&str>,
        now: Instant,
    ) -> ApiError {
        self.count_failure(ctx, reason, key_id, now);
        ApiError::Unauthorized
    }

    /// Refuses (429 `rate_limited`, `Retry-After` until the next failure
    /// is forgiven, the `"auth_failures"` rate-limit fields in `ctx.rate`)
    /// an address past `auth.max_failures_per_minute`; reads nothing of
    /// the request but its client address. Also for the sign-in route.
    pub fn check_failure_budget(&self, ctx: &mut Ctx, now: Instant) -> Result<(), ApiError> {
        let budget = self.failures.peek(&failure_key(ctx), now);
        if budget.allowed {
            return Ok(());
        }
        let retry_after_s = budget.info.reset_s;
        ctx.rate = Some(budget.info);
        self.log.auth_failed(ctx, "too_many_failures", None);
        Err(ApiError::RateLimited { retry_after_s })
    }

    /// Authenticates the request at `now` (see the module doc).
    pub fn check(&self, ctx: &mut Ctx, now: Instant) -> Result<(), ApiError> {
        if self.mode == AuthMode::None {
            ctx.principal = self.local.cloned();
            return Ok(());
        }
        // An unrouted request never reaches here; if one did, it needs a key.
        if ctx.route.is_some_and(|r| r.auth_exempt()) {
            return Ok(());
        }
        // Past `max_failures_per_minute`, the address is refused before its
        // key is even read. A valid key from that address is refused too,
        // on purpose: telling it apart would need the lookup this limit
        // exists to avoid, and a 200-vs-429 answer would keep the address
        // an oracle for guessed keys. The owner of a valid key waits for
        // `Retry-After` (one failure refills every 60/N s) or uses another
        // address.
        self.check_failure_budget(ctx, now)?;
        // A browser session (cookie), when no key is presented.
        if ctx.header_all("authorization").is_empty() {
            if let Some(token) = ctx.cookie(SESSION_COOKIE).map(str::to_string) {
                return match self.sessions.lookup_session(&token, self.session_idle_ms)? {
                    crate::db::sessions::SessionLookup::Valid { principal, hash } => {
                        ctx.principal = Some(principal);
                        ctx.session = Some(hash);
                        Ok(())
                    }
                    crate::db::sessions::SessionLookup::Invalid => {
                        Err(self.refuse(ctx, "session", None, now))
                    }
                };
            }
        }
        let key = match presented_key(ctx) {
            Ok(k) => k,
            Err(r) => {
                let reason = if r == Refusal::Missing {
                    "missing"
                } else {
                    "malformed"
                };
                return Err(self.refuse(ctx, reason, None, now));
            }
        };
        match self.keys.lookup(key)? {
            KeyLookup::Valid(grant) => {
                ctx.key_id = Some(grant.key_id);
                ctx.principal = Some(grant.principal);
                ctx.key_models = grant.models;
                Ok(())
            }
            KeyLookup::Revoked { id } => Err(self.refuse(ctx, "revoked", Some(&id), now)),
            KeyLookup::Expired { id } => Err(self.refuse(ctx, "expired", Some(&id), now)),
            // A real key of a disabled user: not a guess, so no failure is
            // counted against the address.
            KeyLookup::Disabled { id } => {
                self.log.auth_failed(ctx, "user_disabled", Some(&id));
                Err(ApiError::Forbidden)
            }
            KeyLookup::Unknown => Err(self.refuse(ctx, "unknown", None, now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Method;

    fn ctx(headers: &[&str]) -> Ctx {
        let mut c = Ctx::new(Method::Get, "/api/projects", "127.0.0.1".parse().unwrap());
        for h in headers {
            c = c.with_header("authorization", h);
        }
        c
    }

    #[test]
    fn header_shape_table() {
        let key = format!("pcs_{}", "0f".repeat(24));
        let ok = [
            format!("Bearer {}", key),
            format!("bearer  {} ", key),
            format!("BEARER {}", key),
        ];
        for h in &ok {
            assert_eq!(presented_key(&ctx(&[h])), Ok(key.as_str()), "{}", h);
        }
        assert_eq!(presented_key(&ctx(&[])), Err(Refusal::Missing));
        let bad = [
            key.clone(),
            format!("Basic {}", key),
            "Bearer".to_string(),
            "Bearer ".to_string(),
            format!("Bearer {}x", key),
            "Bearer sk-abc".to_string(),
        ];
        for h in &bad {
            assert_eq!(presented_key(&ctx(&[h])), Err(Refusal::Malformed), "{}", h);
        }
        let twice = format!("Bearer {}", key);
        assert_eq!(
            presented_key(&ctx(&[&twice, &twice])),
            Err(Refusal::Malformed)
        );
    }

    /// Keys in a map; failures recorded, lookups counted.
    #[derive(Default)]
    struct Fake {
        valid: Vec<String>,
        lookups: std::cell::Cell<u32>,
        failures: std::cell::RefCell<Vec<&'static str>>,
    }

    impl KeyStore for Fake {
        fn lookup(&self, presented: &str) -> Result<KeyLookup, ApiError> {
            self.lookups.set(self.lookups.get() + 1);
            Ok(if self.valid.iter().any(|k| k == presented) {
                KeyLookup::Valid(keys::Grant {
                    key_id: "k1".into(),
                    principal: crate::db::Principal {
                        user_id: "u1".into(),
                        name: "alice".into(),
                        role: crate::db::users::Role::Member,
                    },
                    models: None,
                    expires_at: None,
                })
            } else {
                KeyLookup::Unknown
            })
        }
    }

    impl SessionStore for Fake {
        fn lookup_session(
            &self,
            _: &str,
            _: i64,
        ) -> Result<crate::db::sessions::SessionLookup, ApiError> {
            Ok(crate::db::sessions::SessionLookup::Invalid)
        }
    }

    impl FailureLog for Fake {
        fn auth_failed(&self, _: &Ctx, reason: &'static str, _: Option<&str>) {
            self.failures.borrow_mut().push(reason);
        }
    }

    #[test]
    fn failed_keys_are_limited_per_address_before_any_lookup() {
        let valid = format!("pcs_{}", "a1".repeat(24));
        let fake = Fake {
            valid: vec![valid.clone()],
            ..Default::default()
        };
        let limiter = Limiter::for_auth_failures(20, 1000);
        let app = Auth {
            mode: AuthMode::ApiKey,
            local: None,
            keys: &fake,
            sessions: &fake,
            session_idle_ms: 3_600_000,
            failures: &limiter,
            log: &fake,
        };
        let check_at = |app: &Auth, ctx: &mut Ctx, now| app.check(ctx, now);
        let wrong = format!("pcs_{}", "0f".repeat(24));
        let req = |from: &str, key: &str, route: crate::router::Route| {
            let mut ctx = Ctx::new(Method::Get, "/api/projects", from.parse().unwrap())
                .with_header("authorization", &format!("Bearer {}", key));
            ctx.client = ctx.peer;
            ctx.route = Some(route);
            ctx
        };
        let projects = crate::router::Route::ProjectsList;
        let t0 = Instant::now();
        for _ in 0..20 {
            let mut ctx = req("198.51.100.7", &wrong, projects);
            assert_eq!(check_at(&app, &mut ctx, t0), Err(ApiError::Unauthorized));
        }
        let refusals = |reason: &str| {
            fake.failures
                .borrow()
                .iter()
                .filter(|r| **r == reason)
                .count()
        };
        assert_eq!(refusals("unknown"), 20);
        // (case, client, key, route, wait after the 20th failure, outcome)
        type Row<'a> = (
            &'a str,
            &'a str,
            &'a str,
            crate::router::Route,
            u64,
            Result<(), ApiError>,
        );
        let rows: &[Row] = &[
            (
                "21st_wrong_key_is_429_with_exact_retry_after",
                "198.51.100.7",
                &wrong,
                projects,
                0,
                Err(ApiError::RateLimited { retry_after_s: 3 }),
            ),
            (
                "valid_key_from_the_same_address_is_refused_too",
                "198.51.100.7",
                &valid,
                projects,
                0,
                Err(ApiError::RateLimited { retry_after_s: 3 }),
            ),
            (
                "exempt_route_is_still_served",
                "198.51.100.7",
                &wrong,
                crate::router::Route::Health,
                0,
                Ok(()),
            ),
            (
                "valid_key_from_another_address_passes",
                "198.51.100.8",
                &valid,
                projects,
                0,
                Ok(()),
            ),
            (
                "once_a_failure_refilled_the_valid_key_passes",
                "198.51.100.7",
                &valid,
                projects,
                3,
                Ok(()),
            ),
            (
                "and_a_wrong_key_takes_that_failure_again",
                "198.51.100.7",
                &wrong,
                projects,
                3,
                Err(ApiError::Unauthorized),
            ),
            (
                "leaving_the_address_over_the_limit",
                "198.51.100.7",
                &wrong,
                projects,
                3,
                Err(ApiError::RateLimited { retry_after_s: 3 }),
            ),
        ];
        for (name, from, key, route, wait_s, want) in rows {
            let mut ctx = req(from, key, *route);
            let got = check_at(&app, &mut ctx, t0 + std::time::Duration::from_secs(*wait_s));
            assert_eq!(&got, want, "{}", name);
            if let Err(ApiError::RateLimited { .. }) = got {
                let rate = ctx.rate.as_ref().expect("rate-limit fields");
                assert_eq!(
                    (rate.policy, rate.limit, rate.remaining),
                    ("auth_failures", 20, 0)
                );
            }
        }
        // Lookups: 20 + 1 unknown, 2 valid; the three 429s never looked up.
        assert_eq!(refusals("unknown"), 21);
        assert_eq!(refusals("too_many_failures"), 3);
        assert_eq!(fake.lookups.get(), 23);
    }
}
