//! The figures the app shows, worded once: numbers formatted without std's float formatter,
//! decimals read without its float parser (both would weigh on the UI bundle), and the
//! retry and time-left wording.

/// A plain decimal number (`7`, `-2.5`, `.75`), as query parameters carry them; exponents,
/// `inf` and `NaN` are refused. Parsed with integers so the UI bundle links no float parser.
pub fn decimal(text: &str) -> Option<f64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.len() + fraction.len() == 0
        || whole.len() > 15
        || !all_digits(whole)
        || !all_digits(fraction)
    {
        return None;
    }
    let fraction = &fraction[..fraction.len().min(15)];
    let whole_value = if whole.is_empty() {
        0
    } else {
        whole.parse::<u64>().ok()?
    };
    let fraction_value = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<u64>().ok()?
    };
    let value = whole_value as f64 + fraction_value as f64 / 10f64.powi(fraction.len() as i32);
    Some(if negative { -value } else { value })
}

/// Seconds to wait before retrying a request: the ETA when there is one, else 5, kept in
/// 1..=30 (the old studio's `retry_after` convention).
pub fn retry_after_s(eta_s: Option<f64>) -> u32 {
    match eta_s {
        Some(eta) if eta.is_finite() => (eta.ceil() as i64).clamp(1, 30) as u32,
        _ => 5,
    }
}

/// "12 s, about 20 s left" (or "12 s" without an estimate): how long long GPU work has run
/// and what is left of it, worded once for the cut-out and for generation.
pub fn time_so_far(elapsed_s: f64, left_s: Option<f64>) -> String {
    let elapsed = fixed(elapsed_s, 0);
    match left_s {
        Some(left) => format!("{elapsed} s, about {} s left", fixed(left.ceil(), 0)),
        None => format!("{elapsed} s"),
    }
}

/// `value` with `decimals` digits after the point (at most 4), rounded half away from zero, by
/// integer arithmetic: what `{:.N}` prints for the UI's figures without linking std's float
/// formatter (and its tables) into the UI bundle.
pub fn fixed(value: f64, decimals: usize) -> String {
    let decimals = decimals.min(4);
    let scale = 10_i64.pow(decimals as u32);
    if !value.is_finite() || value.abs() >= (i64::MAX / scale) as f64 {
        return if value.is_nan() {
            "NaN".into()
        } else {
            "∞".into()
        };
    }
    let scaled = (value * scale as f64).round() as i64;
    let sign = if scaled < 0 { "-" } else { "" };
    let (whole, part) = (
        scaled.unsigned_abs() / scale as u64,
        scaled.unsigned_abs() % scale as u64,
    );
    if decimals == 0 {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{part:0decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_reads_what_parse_does() {
        for text in ["7", "7.5", "-2.25", ".75", "0.000001", "123456.5", "+3"] {
            assert_eq!(decimal(text), text.parse::<f64>().ok(), "{text}");
        }
        for text in [
            "",
            ".",
            "-",
            "1e3",
            "inf",
            "NaN",
            "1.2.3",
            "abc",
            "1,5",
            "9999999999999999",
        ] {
            assert_eq!(decimal(text), None, "{text}");
        }
    }

    #[test]
    fn fixed_prints_what_format_does() {
        for (value, decimals) in [
            (0.0, 1),
            (12.34, 1),
            (99.96, 1),
            (0.5, 0),
            (2.5, 0),
            (-3.26, 1),
            (88.1234, 4),
            (1e9, 0),
            (0.00049, 3),
        ] {
            let ours = fixed(value, decimals);
            // Half-way cases round away from zero here, to even in `format!`.
            if (value * 10f64.powi(decimals as i32)).fract().abs() != 0.5 {
                assert_eq!(ours, format!("{value:.decimals$}"), "{value} to {decimals}");
            }
        }
        assert_eq!(fixed(2.5, 0), "3");
        assert_eq!(fixed(-0.04, 1), "0.0");
        assert_eq!(fixed(f64::NAN, 1), "NaN");
        assert_eq!(time_so_far(12.4, Some(19.2)), "12 s, about 20 s left");
    }

    #[test]
    fn retry_after_follows_the_eta_within_bounds() {
        assert_eq!(retry_after_s(None), 5);
        assert_eq!(retry_after_s(Some(0.2)), 1);
        assert_eq!(retry_after_s(Some(7.1)), 8);
        assert_eq!(retry_after_s(Some(500.0)), 30);
        assert_eq!(retry_after_s(Some(f64::NAN)), 5);
    }
}
