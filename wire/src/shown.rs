//! Values as people read them. An aggregate of readings with one decimal is computed in
//! binary floating point, and printed in full it shows noise no sensor measured
//! (`79.60000000000001`, `78.66666666666667`). [`Shown`] prints at most
//! [`SIGNIFICANT_DIGITS`] significant digits with trailing zeros dropped: `79.6`, `78.6667`.
//! The page, the demo, `fleetmeter status` and the logs use it; JSON keeps full precision.

use std::fmt;

/// Significant digits shown: more than any sensor we ship reports (0.1 °C over 100 °C is
/// four), few enough to hide the 16th-digit noise of a mean.
pub const SIGNIFICANT_DIGITS: i32 = 6;

/// A sample, for a person: `temperature=21.5 Cel, humidity=40.2 %`.
#[derive(Clone, Copy, Debug)]
pub struct ShownSample<'a>(pub &'a [crate::Quantity]);

impl fmt::Display for ShownSample<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, q) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{}={}", q.name, Shown(q.value))?;
            if !q.unit.is_empty() {
                write!(f, " {}", q.unit)?;
            }
        }
        Ok(())
    }
}

/// `value`, for a person: `format!("{}", Shown(79.60000000000001)) == "79.6"`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shown(pub f64);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if !v.is_finite() {
            return write!(f, "{v}");
        }
        if v == 0.0 {
            return f.write_str("0");
        }
        let magnitude = v.abs().log10().floor() as i32;
        if !(-5..15).contains(&magnitude) {
            // Very large or very small: scientific, the mantissa trimmed the same way.
            let text = format!("{:.*e}", (SIGNIFICANT_DIGITS - 1) as usize, v);
            let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
            return write!(f, "{}e{exponent}", trim(mantissa));
        }
        let decimals = (SIGNIFICANT_DIGITS - 1 - magnitude).max(0) as usize;
        let text = format!("{v:.decimals$}");
        let text = trim(&text);
        f.write_str(if text == "-0" { "0" } else { text })
    }
}

/// `12.3400` → `12.34`, `12.000` → `12`; a number without a decimal point is left as is.
fn trim(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::Shown;

    fn shown(v: f64) -> String {
        Shown(v).to_string()
    }

    #[test]
    fn the_noise_of_a_mean_is_not_shown() {
        // The values the issue quotes, from the page and the demo.
        assert_eq!(shown(78.10000000000001), "78.1");
        assert_eq!(shown(79.89999999999999), "79.9");
        assert_eq!(shown(78.66666666666667), "78.6667");
        assert_eq!(shown(79.36666666666666), "79.3667");
        assert_eq!(shown(79.60000000000001), "79.6");
        assert_eq!(shown((0.1 + 0.2) * 10.0), "3");
    }

    #[test]
    fn what_the_data_says_is_kept() {
        assert_eq!(shown(80.0), "80");
        assert_eq!(shown(80.5), "80.5");
        assert_eq!(shown(-12.25), "-12.25");
        assert_eq!(shown(0.0), "0");
        assert_eq!(shown(-0.0), "0");
        assert_eq!(shown(-0.000_000_1), "-1e-7");
        assert_eq!(shown(0.001_234_567), "0.00123457");
        assert_eq!(shown(123_456.7), "123457");
        assert_eq!(shown(99.999_999), "100");
        assert_eq!(shown(1.5e20), "1.5e20");
        assert_eq!(shown(f64::NAN), "NaN");
        assert_eq!(shown(f64::INFINITY), "inf");
    }

    #[test]
    fn a_shown_value_reads_back_within_its_precision() {
        for v in [
            78.66666666666667,
            1234.5678,
            0.000123456789,
            -5.55555555,
            3.0e-5,
        ] {
            let back: f64 = shown(v).parse().unwrap();
            assert!(((back - v) / v).abs() < 1e-5, "{v} shown as {back}");
        }
    }
}
