//! Value parsers shared by the tools' command-line arguments.

use std::time::Duration;

/// A number of seconds that is positive and fits a `Duration`.
pub(crate) fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && Duration::try_from_secs_f64(secs).is_ok() => Ok(secs),
        _ => Err(format!("{s} is not a positive number of seconds")),
    }
}

/// A number of seconds that is zero or positive.
pub(crate) fn non_negative_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs >= 0.0 && Duration::try_from_secs_f64(secs).is_ok() => Ok(secs),
        _ => Err(format!("{s} is not zero or a positive number of seconds")),
    }
}

/// A positive, finite rate.
pub(crate) fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("{s} is not a positive number per second")),
    }
}
