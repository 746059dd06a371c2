//! Name resolution for the upstream without a thread per request.
//!
//! ureq's `DefaultResolver` resolves before every call, even when a pooled
//! connection will be reused, and with a timeout set it does so on a new
//! thread each time (measured: a `clone3` per relayed request, most of the
//! relay's overhead). The upstream's address almost never changes, so:
//! IP literals are returned as they are, and names are resolved through
//! the default resolver (with its timeout) at most once per `TTL`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long a resolved name is reused.
const TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct CachingResolver {
    inner: DefaultResolver,
    cache: Mutex<Option<(String, Instant, ResolvedSocketAddrs)>>,
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return self.inner.resolve(uri, config, timeout);
        };
        let Some(host_port) = DefaultResolver::host_and_port(scheme, authority) else {
            return self.inner.resolve(uri, config, timeout);
        };
        if let Ok(addr) = host_port.parse::<std::net::SocketAddr>() {
            let mut out = self.empty();
            out.push(addr);
            return Ok(out);
        }
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((key, at, addrs)) = cache.as_ref() {
                if *key == host_port && at.elapsed() < TTL {
                    return Ok(addrs.clone());
                }
            }
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((host_port, Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_resolve_without_lookup_and_names_are_cached() {
        let r = CachingResolver::default();
        let cfg = ureq::config::Config::default();
        let uri: ureq::http::Uri = "http://127.0.0.1:11434/v1/models".parse().unwrap();
        let got = r.resolve(&uri, &cfg, NextTimeout::default()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0], "127.0.0.1:11434".parse().unwrap());
        let uri: ureq::http::Uri = "http://[::1]/v1".parse().unwrap();
        let got = r.resolve(&uri, &cfg, NextTimeout::default()).unwrap();
        assert_eq!(got[0], "[::1]:80".parse().unwrap());
        let uri: ureq::http::Uri = "http://localhost:9/x".parse().unwrap();
        let a = r.resolve(&uri, &cfg, NextTimeout::default()).unwrap();
        assert!(!a.is_empty());
        assert!(r.cache.lock().unwrap().is_some(), "a name is cached");
    }
}
