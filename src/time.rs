//! Times as RFC 3339 UTC with milliseconds (`2026-11-23T15:29:03.123Z`),
//! without a date crate: civil-from-days (Howard Hinnant's algorithm).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

pub fn format_rfc3339_millis(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64;
    format_millis(ms)
}

/// Formats epoch milliseconds.
pub fn format_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        y,
        m,
        d,
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        milli
    )
}

/// An HTTP date (IMF-fixdate): `Mon, 23 Nov 2026 15:29:03 GMT`.
pub fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, the only
/// form RFC 9110 asks senders to use) back to a time.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut p = s.split_ascii_whitespace();
    let (_wkday, d, mon, y, hms, zone) = (
        p.next()?,
        p.next()?,
        p.next()?,
        p.next()?,
        p.next()?,
        p.next()?,
    );
    if zone != "GMT" || p.next().is_some() {
        return None;
    }
    let d: u32 = d.parse().ok()?;
    let m = MONTHS.iter().position(|x| *x == mon)? as u32 + 1;
    let y: i64 = y.parse().ok()?;
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 || t.next().is_some() {
        return None;
    }
    let secs = days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` back to epoch milliseconds.
pub fn parse_rfc3339_millis(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut dp = date.split('-');
    let y: i64 = dp.next()?.parse().ok()?;
    let m: u32 = dp.next()?.parse().ok()?;
    let d: u32 = dp.next()?.parse().ok()?;
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, b),
        None => (time, "0"),
    };
    let mut tp = hms.split(':');
    let hh: i64 = tp.next()?.parse().ok()?;
    let mm: i64 = tp.next()?.parse().ok()?;
    let ss: i64 = tp.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let frac3: String = frac.chars().chain("000".chars()).take(3).collect();
    let ms: i64 = frac3.parse().ok()?;
    Some((days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss) * 1000 + ms)
}

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// The day (since the epoch, UTC) of epoch milliseconds.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// The first day of the month holding `day`.
pub fn month_start(day: i64) -> i64 {
    let (y, m, _) = civil_from_days(day);
    days_from_civil(y, m, 1)
}

/// The first day of the month after the one holding `day`.
pub fn next_month_start(day: i64) -> i64 {
    let (y, m, _) = civil_from_days(day);
    match m {
        12 => days_from_civil(y + 1, 1, 1),
        _ => days_from_civil(y, m + 1, 1),
    }
}

/// `YYYY-MM-DD` of a day since the epoch.
pub fn format_day(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{:04}-{:02}-{:02}", y, m, d)
}

/// Parses an RFC 3339 time with `Z` or an offset (`2026-12-02T10:00:00+01:00`,
/// fractions of a second allowed), or a bare date (`2026-12-02`, its
/// midnight UTC), to epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    if s.len() == 10 {
        return parse_rfc3339_millis(&format!("{}T00:00:00Z", s));
    }
    if s.ends_with('Z') || s.ends_with('z') {
        return parse_rfc3339_millis(&format!("{}Z", &s[..s.len() - 1]).replacen('t', "T", 1));
    }
    // `±HH:MM` at the end.
    let cut = s.len().checked_sub(6)?;
    let (local, offset) = (s.get(..cut)?, s.get(cut..)?);
    let sign = match offset.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (hh, mm) = offset[1..].split_once(':')?;
    let (hh, mm): (i64, i64) = (hh.parse().ok()?, mm.parse().ok()?);
    if hh > 23 || mm > 59 {
        return None;
    }
    let at = parse_rfc3339_millis(&format!("{}Z", local))?;
    Some(at - sign * (hh * 3600 + mm * 60) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_447_743);
        assert_eq!(parse_http_date(&http_date(t)), Some(t));
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        for bad in [
            "",
            "120",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{}", bad);
        }
    }

    #[test]
    fn formats_and_parses_round_trip() {
        assert_eq!(format_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_millis(1_795_447_743_123), "2026-11-23T15:29:03.123Z");
        for ms in [0, 951_782_400_000, 1_795_447_743_123, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339_millis(&format_millis(ms)), Some(ms));
        }
        assert_eq!(parse_rfc3339_millis("nope"), None);
        for ms in [
            0i64,
            1_795_447_743_123,
            1_795_447_743_999,
            1_795_447_744_000,
            1_795_447_743_005,
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(ms as u64);
            assert_eq!(format_rfc3339_millis(t), format_millis(ms));
        }
        let t = UNIX_EPOCH + Duration::from_millis(1_795_447_743_123);
        assert_eq!(http_date(t), "Mon, 23 Nov 2026 15:29:03 GMT");
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn days_months_and_offsets() {
        let t = parse_rfc3339("2026-12-02T10:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2026-12-02T11:30:00+01:30"), Some(t));
        assert_eq!(parse_rfc3339("2026-12-02T08:00:00.000-02:00"), Some(t));
        assert_eq!(parse_rfc3339("2026-12-02"), Some(t - 10 * 3_600_000));
        for bad in [
            "",
            "2026-12-02T10:00:00",
            "2026-12-02T10:00:00+25:00",
            "yesterday",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{}", bad);
        }
        let day = day_of(t);
        assert_eq!(format_day(day), "2026-12-02");
        assert_eq!(format_day(month_start(day)), "2026-12-01");
        assert_eq!(format_day(next_month_start(day)), "2027-01-01");
        let feb = day_of(parse_rfc3339("2028-02-29").unwrap());
        assert_eq!(format_day(next_month_start(feb)), "2028-03-01");
        assert_eq!(month_start(month_start(feb)), month_start(feb));
    }
}
