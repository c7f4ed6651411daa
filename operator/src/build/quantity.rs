//! Kubernetes resource quantities: just enough to compare sizes ("36Gi" > "20Gi", "1" == "1000m").

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A `Quantity` from a string literal.
pub fn q(s: &str) -> Quantity {
    Quantity(s.to_string())
}

/// The value of a quantity in base units, or `None` when it is not a valid quantity.
pub fn parse(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * factor)
}

/// Whether two quantity strings denote the same amount (the API server may normalise "0.5" to "500m").
pub fn same(a: &str, b: &str) -> bool {
    a == b || matches!((parse(a), parse(b)), (Some(x), Some(y)) if (x - y).abs() <= f64::EPSILON * x.abs().max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_decimal_and_milli() {
        assert_eq!(parse("20Gi"), Some(20.0 * 1024f64.powi(3)));
        assert_eq!(parse("512Mi"), Some(512.0 * 1024f64.powi(2)));
        assert_eq!(parse("500m"), Some(0.5));
        assert_eq!(parse("2"), Some(2.0));
        assert_eq!(parse("1k"), Some(1000.0));
        assert_eq!(parse("1e3"), Some(1000.0));
        assert_eq!(parse("abc"), None);
        assert_eq!(parse("1Zi"), None);
    }

    #[test]
    fn compares_across_spellings() {
        assert!(same("0.5", "500m"));
        assert!(same("1", "1000m"));
        assert!(same("1Gi", "1024Mi"));
        assert!(!same("1G", "1Gi"));
        assert!(parse("36Gi") > parse("20Gi"));
    }
}
