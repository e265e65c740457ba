//! Recovery target times: what `restore --type time --target ...` accepts, and how the setting is written.
//!
//! A value without a zone is the local time of the machine running strata (as the DBA reads it off a
//! clock); a zone is `Z`/`UTC`/`GMT`, an offset, or a time zone name such as `Europe/Berlin`, read with the
//! time zone database's rules (through jiff, the system's database or the bundled copy). A wall-clock
//! time that daylight saving time skips or repeats is refused, and so is an abbreviation such as `CET`
//! (PostgreSQL reads those as fixed offsets, the database as zones with DST): the instant recovery stops
//! at must not depend on a guess. The setting is written for PostgreSQL in UTC with an explicit offset, so
//! the server's `timezone` cannot change its meaning.

use anyhow::{anyhow, bail};
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use jiff::{civil, Timestamp};

/// Parses `YYYY-MM-DD HH:MM[:SS[.ffffff]]` (or with `T`), optionally followed by `Z`, `UTC`, `GMT`, an
/// offset `+HH`, `+HH:MM`, `+HHMM`, or a time zone name such as `Europe/Berlin`; without one, the local
/// time zone. Returns microseconds since the Unix epoch.
pub fn parse_time(s: &str) -> anyhow::Result<i64> {
    parse_time_in(s, &TimeZone::system())
}

/// [`parse_time`], with `local` as the local time zone.
fn parse_time_in(s: &str, local: &TimeZone) -> anyhow::Result<i64> {
    let s = s.trim();
    let bad = || anyhow!("expected a time like 2026-11-24 15:16:59, optionally with .ffffff and a zone (+00, +01:00, Z, Europe/Berlin)");
    let digits = |t: &str, n: usize| -> Option<i64> {
        (t.len() == n && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse().ok()).flatten()
    };
    let (date, rest) = s.split_at_checked(10).ok_or_else(bad)?;
    let mut d = date.split('-');
    let (y, mo, day) = (
        d.next().and_then(|t| digits(t, 4)).ok_or_else(bad)?,
        d.next().and_then(|t| digits(t, 2)).ok_or_else(bad)?,
        d.next().and_then(|t| digits(t, 2)).ok_or_else(bad)?,
    );
    let rest = rest.strip_prefix([' ', 'T']).ok_or_else(bad)?;
    // The clock part runs up to the zone.
    let clock_end = rest.find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.')).unwrap_or(rest.len());
    let (clock, zone) = rest.split_at(clock_end);
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.split(':');
    let h = t.next().and_then(|v| digits(v, 2)).ok_or_else(bad)?;
    let mi = t.next().and_then(|v| digits(v, 2)).ok_or_else(bad)?;
    let sec = match t.next() {
        Some(v) => digits(v, 2).ok_or_else(bad)?,
        None => 0,
    };
    if t.next().is_some() || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let micros: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse().map_err(|_| bad())? };
    // Every field has at most 4 digits, so the casts keep its value; jiff checks the ranges (the days of
    // each month, leap years included).
    let wall = civil::Date::new(y as i16, mo as i8, day as i8)
        .and_then(|date| Ok(date.to_datetime(civil::Time::new(h as i8, mi as i8, sec as i8, micros as i32 * 1000)?)))
        .map_err(|_| anyhow!("{date} {clock} is not a valid date and time"))?;
    let instant = match zone.trim() {
        "" => in_zone(wall, local, "the local time zone")?,
        "Z" | "z" | "UTC" | "utc" | "GMT" => in_zone(wall, &TimeZone::UTC, "UTC")?,
        z if z.starts_with(['+', '-']) => in_zone(wall, &TimeZone::fixed(parse_offset(z)?), z)?,
        // Only Area/Location names: PostgreSQL reads an abbreviation such as CET as a fixed offset (+01
        // all year), while the time zone database's zone of that name follows daylight saving time.
        z if z.contains('/') => match TimeZone::get(z) {
            Ok(tz) => in_zone(wall, &tz, z)?,
            Err(_) => bail!("unknown time zone '{z}': give an offset such as +00 or -05:00, or a zone name such as Europe/Berlin"),
        },
        z => bail!("unknown time zone '{z}': give an offset such as +00 or -05:00, or a zone name such as Europe/Berlin"),
    };
    Ok(instant.as_microsecond())
}

/// `+HH`, `+HH:MM` or `+HHMM` (or `-`), up to 15 hours as PostgreSQL allows.
fn parse_offset(z: &str) -> anyhow::Result<Offset> {
    let digits = |t: &str| (t.len() == 2 && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse::<i32>().ok()).flatten();
    let sign = if z.starts_with('-') { -1 } else { 1 };
    let body = z[1..].replace(':', "");
    let (zh, zm) = match body.len() {
        2 => (digits(&body), Some(0)),
        4 => (digits(&body[..2]), digits(&body[2..])),
        _ => (None, None),
    };
    match (zh, zm) {
        (Some(zh), Some(zm)) if zh <= 15 && zm < 60 => Ok(Offset::from_seconds(sign * (zh * 3600 + zm * 60))?),
        _ => bail!("time zone offset '{z}': expected +HH, +HH:MM or +HHMM"),
    }
}

/// The instant a wall-clock time in `tz` names. A time that the clocks skip (daylight saving time starts)
/// or show twice (it ends) is refused rather than guessed: which instant recovery stops at is the whole
/// point of a time target, and PostgreSQL's own rule for such times is not what a DBA expects.
fn in_zone(wall: civil::DateTime, tz: &TimeZone, zone_name: &str) -> anyhow::Result<Timestamp> {
    let shown = wall.strftime("%Y-%m-%d %H:%M:%S");
    let out_of_range = |_| anyhow!("{shown} in {zone_name} is out of range");
    match tz.to_ambiguous_timestamp(wall).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(wall).map_err(out_of_range),
        AmbiguousOffset::Gap { before, after } => bail!(
            "{shown} does not exist in {zone_name}: the clocks go from {} to {} there; give the time with its offset",
            offset_text(before),
            offset_text(after)
        ),
        AmbiguousOffset::Fold { before, after } => bail!(
            "{shown} happens twice in {zone_name} (at offset {} and again at {}); give the time with the offset you mean, such as '{shown}{}'",
            offset_text(before),
            offset_text(after),
            offset_text(before)
        ),
    }
}

/// `+01`, `-05`, `+05:30`: an offset as PostgreSQL prints it.
fn offset_text(offset: Offset) -> String {
    let secs = offset.seconds();
    let sign = if secs < 0 { '-' } else { '+' };
    let (h, m) = (secs.abs() / 3600, secs.abs() / 60 % 60);
    if m == 0 { format!("{sign}{h:02}") } else { format!("{sign}{h:02}:{m:02}") }
}

/// `2026-11-24 15:16:59.123456+00`: what PostgreSQL reads unambiguously.
pub fn format_pg_time(micros: i64) -> String {
    let base = strata_stamp::format_time(micros.div_euclid(1_000_000));
    format!("{base}.{:06}+00", micros.rem_euclid(1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_with_zones() {
        let t = parse_time("2026-11-24 15:16:59+00").unwrap();
        assert_eq!(t, 1_795_533_419_000_000);
        assert_eq!(format_pg_time(t), "2026-11-24 15:16:59.000000+00");
        assert_eq!(parse_time("2026-11-24T15:16:59Z").unwrap(), t);
        assert_eq!(parse_time("2026-11-24 16:16:59+01:00").unwrap(), t);
        assert_eq!(parse_time("2026-11-24 10:16:59 -0500").unwrap(), t);
        assert_eq!(parse_time("2026-11-24 15:16:59.5 UTC").unwrap(), t + 500_000);
        assert_eq!(parse_time("2026-11-24 15:16:59.123456+00").unwrap(), t + 123_456);
        assert_eq!(parse_time("2026-11-24 15:16+00").unwrap(), t - 59_000_000);
        assert_eq!(format_pg_time(t + 7), "2026-11-24 15:16:59.000007+00");
        assert_eq!(parse_time("2024-02-29 00:00:00+00").unwrap(), 1_709_164_800_000_000);
    }

    #[test]
    fn bad_times() {
        for bad in [
            "",
            "yesterday",
            "2026-11-24",
            "2026-13-01 00:00:00",
            "2026-02-30 00:00:00",
            "2026-11-24 24:00:00",
            "2026-11-24 15:16:59.1234567",
            "2026-11-24 15:16:59 Mars/Olympus",
            // An abbreviation: PostgreSQL's CET is +01 all year, the database's CET is not.
            "2026-07-01 10:00:00 CET",
            "2027-02-29 00:00:00+00",
            "2100-02-29 00:00:00+00",
            "2026-11-24 15:16:59+25",
            "2026-11-24 15:16:59+1",
            "2026-11-24 15:16:59:00",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn zone_names_offsets_and_leap_days() {
        let secs = |s: &str| parse_time(s).unwrap_or_else(|e| panic!("{s}: {e}")) / 1_000_000;
        // Winter in Berlin is +01, summer +02.
        assert_eq!(secs("2026-12-07 10:00:00 Europe/Berlin"), 1_796_634_000);
        assert_eq!(secs("2026-12-07 10:00:00+01"), 1_796_634_000);
        assert_eq!(secs("2026-12-07T09:00:00 UTC"), 1_796_634_000);
        assert_eq!(secs("2026-07-01 12:00:00 Europe/Berlin"), 1_782_900_000);
        assert_eq!(secs("2026-07-01 06:00:00 America/New_York"), 1_782_900_000);
        assert_eq!(secs("2026-07-01 15:30:00+05:30"), 1_782_900_000);
        assert_eq!(parse_time("2026-12-07 10:00:00.123 UTC").unwrap(), 1_796_637_600_123_000);
        assert_eq!(secs("2028-02-29 12:00:00+00"), 1_835_438_400);
        assert_eq!(secs("2000-02-29 00:00:00+00"), 951_782_400);
        // Before 1970, as before: a time like any other (no backup ends before it, so none can serve it).
        assert_eq!(parse_time("1969-12-31 23:59:59+00").unwrap(), -1_000_000);
    }

    #[test]
    fn wall_times_that_daylight_saving_skips_or_repeats_are_refused() {
        // Berlin's clocks went from 02:00 to 03:00 on 2026-03-29 and from 03:00 back to 02:00 on 2026-10-25.
        let gap = parse_time("2026-03-29 02:30:00 Europe/Berlin").unwrap_err().to_string();
        assert!(gap.contains("does not exist in Europe/Berlin") && gap.contains("from +01 to +02"), "{gap}");
        let fold = parse_time("2026-10-25 02:30:00 Europe/Berlin").unwrap_err().to_string();
        assert!(fold.contains("happens twice") && fold.contains("'2026-10-25 02:30:00+02'"), "{fold}");
        // With the offset it is one instant.
        assert_eq!(parse_time("2026-10-25 02:30:00+02").unwrap(), 1_792_888_200_000_000);
        assert_eq!(parse_time("2026-10-25 02:30:00+01").unwrap(), 1_792_888_200_000_000 + 3_600_000_000);
        assert_eq!(parse_time("2026-10-25 01:30:00 Europe/Berlin").unwrap(), 1_792_888_200_000_000 - 3_600_000_000);
        // A time without a zone is the local zone's, with the same rules.
        let new_york = TimeZone::get("America/New_York").unwrap();
        let gap = parse_time_in("2026-03-08 02:30:00", &new_york).unwrap_err().to_string();
        assert!(gap.contains("does not exist in the local time zone") && gap.contains("from -05 to -04"), "{gap}");
        assert!(parse_time_in("2026-11-01 01:30:00", &new_york).unwrap_err().to_string().contains("happens twice"));
        assert_eq!(parse_time_in("2026-07-01 06:00:00", &new_york).unwrap(), 1_782_900_000_000_000);
        assert_eq!(parse_time_in("2026-07-01 06:00:00", &TimeZone::UTC).unwrap(), 1_782_900_000_000_000 - 4 * 3_600_000_000);
    }
}
