//! Small helpers: timestamps, generated names and uids, quantities, JSON paths.

use serde_json::Value;

/// `unix_ms` as RFC 3339 with seconds (`2025-01-01T00:00:00Z`), the form of
/// `metadata.creationTimestamp`.
pub fn rfc3339(unix_ms: u64) -> String {
    let (date, secs) = civil(unix_ms);
    format!("{date}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// `unix_ms` as RFC 3339 with nanoseconds, the form of log line timestamps.
pub fn rfc3339_nanos(unix_ms: u64) -> String {
    let (date, secs) = civil(unix_ms);
    format!("{date}T{:02}:{:02}:{:02}.{:09}Z", secs / 3600, secs / 60 % 60, secs % 60, (unix_ms % 1000) * 1_000_000)
}

/// The date (`YYYY-MM-DD`) and seconds into the day of `unix_ms` (Howard Hinnant's
/// days-to-civil algorithm).
fn civil(unix_ms: u64) -> (String, u64) {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}-{month:02}-{day:02}"), secs % 86_400)
}

/// Reads an RFC 3339 UTC timestamp (`2025-01-01T00:00:00Z`, fractional seconds allowed) as
/// unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (t.next()??, t.next()??, t.next()??);
    let ms: u64 = format!("{frac:0<3}")[..3].parse().ok()?;
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(((days * 86_400) + h * 3600 + m * 60 + sec) * 1000 + ms)
}

/// A deterministic pseudo-random number from a counter (splitmix64): names and uids that
/// look generated without a random source, so a test run is repeatable.
pub fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Five characters of the alphabet `generateName` uses (no vowels, no look-alikes).
pub fn name_suffix(n: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = mix(n);
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// A UUID-shaped uid.
pub fn uid(n: u64) -> String {
    let (a, b) = (mix(n), mix(n ^ 0xdead_beef));
    format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", a >> 32, (a >> 16) & 0xffff, a & 0xfff, b >> 52, b & 0xffff_ffff_ffff)
}

/// A Kubernetes quantity in milli-units (`"1500m"` → 1500, `"2Gi"` → 2·2³⁰·1000), `None`
/// when unreadable. Enough for the scheduler's fit check.
pub fn quantity_millis(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    };
    Some((value * factor * 1000.0).round() as u128)
}

/// The string at `path` (keys) in `v`, if any.
pub fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// `metadata.name` and `metadata.namespace` ("" for cluster-scoped objects).
pub fn name_of(v: &Value) -> &str {
    str_at(v, &["metadata", "name"]).unwrap_or_default()
}

pub fn namespace_of(v: &Value) -> &str {
    str_at(v, &["metadata", "namespace"]).unwrap_or_default()
}

pub fn uid_of(v: &Value) -> &str {
    str_at(v, &["metadata", "uid"]).unwrap_or_default()
}

/// The object's condition of `type_`, if any.
pub fn condition<'a>(v: &'a Value, type_: &str) -> Option<&'a Value> {
    v["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

/// True when the object has condition `type_` with status `True`.
pub fn has_condition(v: &Value, type_: &str) -> bool {
    condition(v, type_).is_some_and(|c| c["status"] == "True")
}

/// Sets condition `type_` (replacing one of the same type), as controllers write them.
pub fn set_condition(v: &mut Value, type_: &str, status: &str, reason: &str, message: &str, now: &str) {
    let new = serde_json::json!({"type": type_, "status": status, "reason": reason, "message": message,
        "lastProbeTime": now, "lastTransitionTime": now});
    if !v["status"].is_object() {
        v["status"] = serde_json::json!({});
    }
    let conditions = v["status"]["conditions"].take();
    let mut list: Vec<Value> = conditions.as_array().cloned().unwrap_or_default();
    match list.iter_mut().find(|c| c["type"] == type_) {
        Some(c) if c["status"] == status && c["reason"] == reason && c["message"] == message => {}
        Some(c) => *c = new,
        None => list.push(new),
    }
    v["status"]["conditions"] = Value::Array(list);
}

/// The pod's phase, `Pending` when unset.
pub fn phase(pod: &Value) -> &str {
    str_at(pod, &["status", "phase"]).unwrap_or("Pending")
}

pub fn is_terminal(pod: &Value) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

pub fn is_deleting(v: &Value) -> bool {
    v["metadata"]["deletionTimestamp"].is_string()
}

/// At most 256 bytes of `s` (on a char boundary), for error messages that quote input.
pub fn prefix(s: &str) -> &str {
    let mut end = s.len().min(256);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(1_735_689_600_000), "2025-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_825_600_000), "2000-02-29T12:00:00Z");
        assert_eq!(rfc3339_nanos(1_735_689_600_123), "2025-01-01T00:00:00.123000000Z");
        assert_eq!(parse_rfc3339("2025-01-01T00:00:00Z"), Some(1_735_689_600_000));
        assert_eq!(parse_rfc3339("2000-02-29T12:00:00.5Z"), Some(951_825_600_500));
    }

    #[test]
    fn quantities_read_decimal_and_binary_suffixes() {
        assert_eq!(quantity_millis("1500m"), Some(1500));
        assert_eq!(quantity_millis("2"), Some(2000));
        assert_eq!(quantity_millis("1Gi"), Some(1_073_741_824_000));
        assert_eq!(quantity_millis("1x"), None);
    }

    #[test]
    fn generated_names_use_five_characters_of_the_generate_name_alphabet() {
        let s = name_suffix(7);
        assert_eq!(s.len(), 5);
        assert!(s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert_ne!(name_suffix(7), name_suffix(8));
    }
}
