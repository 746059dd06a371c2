//! `portcullis keys ...` and `portcullis audit` (placeholder until storage lands).

use crate::config::Config;

pub fn create(_cfg: &Config, _name: &str) -> i32 {
    eprintln!("portcullis: keys are not available in this build");
    1
}

pub fn list(_cfg: &Config) -> i32 {
    eprintln!("portcullis: keys are not available in this build");
    1
}

pub fn revoke(_cfg: &Config, _id: &str) -> i32 {
    eprintln!("portcullis: keys are not available in this build");
    1
}

pub fn audit(_cfg: &Config, _since: Option<&str>, _limit: usize) -> i32 {
    eprintln!("portcullis: audit is not available in this build");
    1
}
