//! Secrets (CSRF secret, upstream key, API keys) live in `Secret`, whose
//! `Debug` and `Display` print `[redacted]`: no log line, error chain or
//! `debug = true` detail can print one by accident.
//!
//! Loading: the CSRF secret comes from `PORTCULLIS_CSRF_SECRET` or is
//! generated once into `<data_dir>/csrf_secret` (mode 0600); the upstream key
//! comes only from the environment variable named by `[upstream] api_key_env`.
//! Every secret loaded here is registered with the logger
//! (`logging::register_secret`), so its value is redacted from every log
//! line, error detail and panic message whatever its shape.

use std::fmt;
use std::path::Path;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    /// The secret's bytes; call sites are the few places that must use it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text (keys are ASCII).
    pub fn expose_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

pub const CSRF_SECRET_ENV: &str = "PORTCULLIS_CSRF_SECRET";
use crate::data_files::CSRF_SECRET_FILE;

/// The CSRF secret: the environment's, else the one in `data_dir`, else a
/// new 32-byte secret written there with mode 0600.
pub fn load_csrf_secret(data_dir: &Path) -> std::io::Result<Secret> {
    if let Ok(v) = std::env::var(CSRF_SECRET_ENV) {
        return Ok(registered(Secret::new(v.into_bytes())));
    }
    let path = data_dir.join(CSRF_SECRET_FILE);
    // Never through a link: whoever planted one would choose the secret.
    match crate::data_files::read(&path) {
        Ok(bytes) if !bytes.is_empty() => return Ok(registered(Secret::new(bytes))),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let secret = crate::ids::random_hex(32).into_bytes();
    crate::data_files::replace(&path, &secret)?;
    Ok(registered(Secret::new(secret)))
}

/// The upstream key from the environment variable `var`, if set and non-empty.
pub fn load_upstream_key(var: &str) -> Option<Secret> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| registered(Secret::new(v.into_bytes())))
}

/// Registers `s` with the logger for redaction by value (see `logging`);
/// a value too short to register is reported by `App::new`.
fn registered(s: Secret) -> Secret {
    crate::logging::register_secret(s.expose());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("sk-live-123");
        assert_eq!(
            format!("{:?} {} {:#?}", s, s, Some(&s)),
            "[redacted] [redacted] Some(\n    [redacted],\n)"
        );
    }

    #[test]
    fn generated_secret_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir =
            std::env::temp_dir().join(format!("portcullis-secret-{}", crate::ids::random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        std::env::remove_var(CSRF_SECRET_ENV);
        let a = load_csrf_secret(&dir).unwrap();
        let b = load_csrf_secret(&dir).unwrap();
        assert_eq!(a, b);
        assert!(a.len() >= 32);
        let mode = std::fs::metadata(dir.join(CSRF_SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
