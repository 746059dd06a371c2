//! `StoreError`: what can go wrong in storage, one variant per outcome a
//! caller can act on. Storage knows nothing of HTTP: the one conversion to
//! the contract's `ApiError` is `impl From<StoreError> for ApiError` at the
//! end of `src/error.rs` (an invariant in ARCHITECTURE.md).

use std::fmt;

use rusqlite::ErrorCode;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// No row has this id.
    NotFound,
    /// A `project_id` that names no project: the reference is checked in
    /// the transaction that would store it.
    UnknownProject,
    /// A value storage refuses, naming its field (a key name, a page size).
    Invalid {
        field: &'static str,
        message: String,
    },
    /// A page cursor not issued for this list, or altered.
    InvalidCursor,
    /// No pooled connection came free within `checkout_timeout_ms`.
    PoolExhausted,
    /// SQLITE_BUSY or SQLITE_LOCKED: another writer held the lock for
    /// longer than `busy_timeout_ms`. Load, not a bug.
    Busy,
    /// SQLITE_FULL: the disk (or a file-size limit) is full. The write was
    /// rolled back, nothing is corrupted, and it may succeed once space is
    /// freed.
    DiskFull,
    /// PostgreSQL cannot be reached (refused, cut, restarting, out of
    /// connections). Load or an outage, not a bug: nothing was written.
    Unavailable,
    /// Anything else: a bug or a damaged file. `detail` is for logs only.
    Internal { detail: String },
}

impl StoreError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> StoreError {
        StoreError::Invalid {
            field,
            message: message.into(),
        }
    }

    pub fn internal(detail: impl fmt::Display) -> StoreError {
        StoreError::Internal {
            detail: detail.to_string(),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    /// Sorts SQLite's failures into what a caller can act on; anything
    /// unexpected keeps its text as the private detail.
    fn from(e: rusqlite::Error) -> StoreError {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => StoreError::Busy,
            Some(ErrorCode::DiskFull) => {
                crate::logging::error("database: disk full", &[]);
                StoreError::DiskFull
            }
            _ => StoreError::internal(format!("database: {}", e)),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NotFound => f.write_str("not found"),
            StoreError::UnknownProject => f.write_str("project_id: no project has this id"),
            StoreError::Invalid { field, message } => write!(f, "{}: {}", field, message),
            StoreError::InvalidCursor => f.write_str("cursor: is not a cursor from this list"),
            StoreError::PoolExhausted => f.write_str("no database connection came free in time"),
            StoreError::Busy => f.write_str("the database is busy (locked by another writer)"),
            StoreError::DiskFull => f.write_str("the database's disk is full"),
            StoreError::Unavailable => f.write_str("the database cannot be reached"),
            StoreError::Internal { detail } => f.write_str(detail),
        }
    }
}

impl std::error::Error for StoreError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn sqlite_failures_sort_into_busy_full_and_internal() {
        let table = [
            (sqlite(rusqlite::ffi::SQLITE_BUSY), StoreError::Busy),
            (sqlite(rusqlite::ffi::SQLITE_LOCKED), StoreError::Busy),
            (sqlite(rusqlite::ffi::SQLITE_FULL), StoreError::DiskFull),
        ];
        for (e, want) in table {
            assert_eq!(StoreError::from(e), want);
        }
        match StoreError::from(rusqlite::Error::InvalidQuery) {
            StoreError::Internal { detail } => assert!(detail.contains("database"), "{}", detail),
            other => panic!("{:?}", other),
        }
    }
}
