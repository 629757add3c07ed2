//! Money: an exact amount in integer minor units plus an ISO 4217 currency.
//!
//! Every amount that reaches the daemon becomes a [`Money`] here, and nothing downstream
//! computes with anything else: Stripe's integer minor units (with [`stripe_exponent`]), PayPal's
//! decimal strings ([`Money::parse_exact`]), Worldpay's `value` + `exponent`
//! ([`Money::from_scaled`]), and a shop database's DECIMAL/TEXT ([`Money::parse_rounded`]) or
//! REAL/DOUBLE ([`Money::from_f64`]) columns. Comparing a notification with an order is then
//! integer equality on the same currency.
//!
//! # Exponents
//! [`Currency::exponent`] is ISO 4217's minor unit, from one sorted table: list one as published
//! 2024-06-25, plus the later additions XCG (amendment 176) and XAD (amendment 179). ANG, BGN
//! and CUC, withdrawn since, are kept because old orders and refunds still carry them. Codes
//! without a minor unit (XAU, XAG, XPD, XPT, XDR, XSU, XUA, XBA–XBD, XTS, XXX) are refused.
//!
//! Stripe disagrees with ISO on a few codes, so Stripe amounts go through [`stripe_exponent`]
//! instead: MGA is zero-decimal at Stripe (ISO 2), and ISK stays two-decimal at Stripe
//! (ISO 0; Stripe's amount `100` is 1 króna and must be a multiple of 100). Everything else,
//! including Stripe's three-decimal currencies, follows ISO.
//!
//! # Floats
//! Decimal text is parsed exactly; `f64` arithmetic is never used. The one way in from a float
//! is [`Money::from_f64`], for shops that keep prices in REAL columns: it takes the float's
//! shortest round-trip decimal form (what the shop typed, e.g. `19.99` or `1.005`) and rounds
//! that decimal half away from zero, so `1.005` USD is 101 cents, not the 100 that
//! `(1.005 * 100.0).round()` gives.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// ISO 4217 minor units (see the module doc for the source), sorted by code for binary search.
#[rustfmt::skip]
const ISO_4217: &[(&str, u8)] = &[
    ("AED", 2), ("AFN", 2), ("ALL", 2), ("AMD", 2), ("ANG", 2), ("AOA", 2), ("ARS", 2), ("AUD", 2),
    ("AWG", 2), ("AZN", 2), ("BAM", 2), ("BBD", 2), ("BDT", 2), ("BGN", 2), ("BHD", 3), ("BIF", 0),
    ("BMD", 2), ("BND", 2), ("BOB", 2), ("BOV", 2), ("BRL", 2), ("BSD", 2), ("BTN", 2), ("BWP", 2),
    ("BYN", 2), ("BZD", 2), ("CAD", 2), ("CDF", 2), ("CHE", 2), ("CHF", 2), ("CHW", 2), ("CLF", 4),
    ("CLP", 0), ("CNY", 2), ("COP", 2), ("COU", 2), ("CRC", 2), ("CUC", 2), ("CUP", 2), ("CVE", 2),
    ("CZK", 2), ("DJF", 0), ("DKK", 2), ("DOP", 2), ("DZD", 2), ("EGP", 2), ("ERN", 2), ("ETB", 2),
    ("EUR", 2), ("FJD", 2), ("FKP", 2), ("GBP", 2), ("GEL", 2), ("GHS", 2), ("GIP", 2), ("GMD", 2),
    ("GNF", 0), ("GTQ", 2), ("GYD", 2), ("HKD", 2), ("HNL", 2), ("HTG", 2), ("HUF", 2), ("IDR", 2),
    ("ILS", 2), ("INR", 2), ("IQD", 3), ("IRR", 2), ("ISK", 0), ("JMD", 2), ("JOD", 3), ("JPY", 0),
    ("KES", 2), ("KGS", 2), ("KHR", 2), ("KMF", 0), ("KPW", 2), ("KRW", 0), ("KWD", 3), ("KYD", 2),
    ("KZT", 2), ("LAK", 2), ("LBP", 2), ("LKR", 2), ("LRD", 2), ("LSL", 2), ("LYD", 3), ("MAD", 2),
    ("MDL", 2), ("MGA", 2), ("MKD", 2), ("MMK", 2), ("MNT", 2), ("MOP", 2), ("MRU", 2), ("MUR", 2),
    ("MVR", 2), ("MWK", 2), ("MXN", 2), ("MXV", 2), ("MYR", 2), ("MZN", 2), ("NAD", 2), ("NGN", 2),
    ("NIO", 2), ("NOK", 2), ("NPR", 2), ("NZD", 2), ("OMR", 3), ("PAB", 2), ("PEN", 2), ("PGK", 2),
    ("PHP", 2), ("PKR", 2), ("PLN", 2), ("PYG", 0), ("QAR", 2), ("RON", 2), ("RSD", 2), ("RUB", 2),
    ("RWF", 0), ("SAR", 2), ("SBD", 2), ("SCR", 2), ("SDG", 2), ("SEK", 2), ("SGD", 2), ("SHP", 2),
    ("SLE", 2), ("SOS", 2), ("SRD", 2), ("SSP", 2), ("STN", 2), ("SVC", 2), ("SYP", 2), ("SZL", 2),
    ("THB", 2), ("TJS", 2), ("TMT", 2), ("TND", 3), ("TOP", 2), ("TRY", 2), ("TTD", 2), ("TWD", 2),
    ("TZS", 2), ("UAH", 2), ("UGX", 0), ("USD", 2), ("USN", 2), ("UYI", 0), ("UYU", 2), ("UYW", 4),
    ("UZS", 2), ("VED", 2), ("VES", 2), ("VND", 0), ("VUV", 0), ("WST", 2), ("XAD", 2), ("XAF", 0),
    ("XCD", 2), ("XCG", 2), ("XOF", 0), ("XPF", 0), ("YER", 2), ("ZAR", 2), ("ZMW", 2), ("ZWG", 2),
];

/// Stripe's zero-decimal currencies (docs.stripe.com/currencies), sorted.
const STRIPE_ZERO_DECIMAL: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV",
    "XAF", "XOF", "XPF",
];

/// How much of an offending currency code an error echoes.
const CURRENCY_ECHO: usize = 16;
/// How much of an offending amount an error echoes.
const AMOUNT_ECHO: usize = 32;

fn iso_exponent(code: &[u8; 3]) -> Option<u8> {
    ISO_4217
        .binary_search_by(|(c, _)| c.as_bytes().cmp(code.as_slice()))
        .ok()
        .map(|i| ISO_4217[i].1)
}

/// At most `max` characters of `text`, with `…` when cut, for error messages.
fn echo(text: &str, max: usize) -> String {
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(max).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// An ISO 4217 currency with a defined minor unit; always one from the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    /// US dollar.
    pub const USD: Currency = Currency(*b"USD");
    /// Euro.
    pub const EUR: Currency = Currency(*b"EUR");
    /// Pound sterling.
    pub const GBP: Currency = Currency(*b"GBP");
    /// Japanese yen (zero-decimal).
    pub const JPY: Currency = Currency(*b"JPY");

    /// Parses a three-letter code case-insensitively (`usd`, `USD`); the code must be in the
    /// table. Nothing is trimmed: `" usd"` is an error.
    pub fn parse(code: &str) -> Result<Currency, MoneyError> {
        let unknown = || MoneyError::UnknownCurrency(echo(code, CURRENCY_ECHO));
        let bytes: [u8; 3] = code.as_bytes().try_into().map_err(|_| unknown())?;
        let upper = bytes.map(|b| b.to_ascii_uppercase());
        if !upper.iter().all(u8::is_ascii_uppercase) {
            return Err(unknown());
        }
        iso_exponent(&upper).map(|_| Currency(upper)).ok_or_else(unknown)
    }

    /// The upper-case code, e.g. `"USD"`.
    pub fn code(&self) -> &str {
        // Always ASCII: built only from table codes.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// ISO 4217 minor-unit digits: USD 2, JPY 0, KWD 3, CLF 4.
    pub fn exponent(&self) -> u32 {
        iso_exponent(&self.0).map_or(0, u32::from)
    }
}

/// The exponent of Stripe's integer `amount` fields for `currency`: 0 for Stripe's zero-decimal
/// currencies (which include MGA, ISO 2), 2 for ISK (ISO 0, but two-decimal in Stripe's API),
/// and ISO 4217's otherwise.
pub fn stripe_exponent(currency: Currency) -> u32 {
    if STRIPE_ZERO_DECIMAL.binary_search(&currency.code()).is_ok() {
        0
    } else if currency.code() == "ISK" {
        2
    } else {
        currency.exponent()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = MoneyError;

    fn from_str(code: &str) -> Result<Currency, MoneyError> {
        Currency::parse(code)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Currency, D::Error> {
        let code = String::deserialize(deserializer)?;
        Currency::parse(&code).map_err(serde::de::Error::custom)
    }
}

/// Why an amount or currency was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not a code in the table (or not three letters); holds at most 16 characters of it.
    #[error("unknown currency {0:?}")]
    UnknownCurrency(String),
    /// Not a decimal of the accepted grammar; names the problem and echoes at most 32
    /// characters of the input.
    #[error("malformed amount: {0}")]
    Malformed(String),
    /// More significant fractional digits than the currency has, where rounding is not allowed.
    #[error("amount {text:?} has more than {exponent} decimal places")]
    Inexact {
        /// The amount as given (at most 32 characters).
        text: String,
        /// The currency's exponent.
        exponent: u32,
    },
    /// The amount in minor units does not fit in an `i64`.
    #[error("amount out of range")]
    Overflow,
    /// A float amount was NaN or infinite.
    #[error("amount is not a finite number")]
    NotFinite,
}

/// An exact amount: integer minor units of a currency (cents for USD, yen for JPY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    /// The amount in the currency's minor unit (negative for refunds and reversals).
    pub minor: i64,
    /// The currency, which fixes what one minor unit is.
    pub currency: Currency,
}

/// A decimal split by [`split_decimal`]: sign, integer digits, fractional digits (ASCII).
struct Decimal<'a> {
    negative: bool,
    int: &'a [u8],
    frac: &'a [u8],
}

fn malformed(problem: &str, text: &str) -> MoneyError {
    MoneyError::Malformed(format!("{problem} in {:?}", echo(text, AMOUNT_ECHO)))
}

/// The grammar: `-?[0-9]+(\.[0-9]+)?`. No `+`, spaces, separators or exponent.
fn split_decimal(text: &str) -> Result<Decimal<'_>, MoneyError> {
    if text.is_empty() {
        return Err(MoneyError::Malformed("empty amount".to_owned()));
    }
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if let Some(c) = body.chars().find(|c| !c.is_ascii_digit() && *c != '.') {
        return Err(malformed(&format!("unexpected character {c:?}"), text));
    }
    let (int, frac) = match body.split_once('.') {
        Some((_, frac)) if frac.contains('.') => {
            return Err(malformed("more than one decimal point", text));
        }
        Some((int, frac)) => (int, Some(frac)),
        None => (body, None),
    };
    if int.is_empty() && frac.is_none() {
        return Err(malformed("no digits", text));
    }
    if int.is_empty() {
        return Err(malformed("no digit before the decimal point", text));
    }
    if frac == Some("") {
        return Err(malformed("no digit after the decimal point", text));
    }
    Ok(Decimal { negative, int: int.as_bytes(), frac: frac.unwrap_or("").as_bytes() })
}

/// Parses `text` to minor units of `exponent` digits; extra fractional digits must be zeros
/// unless `round`, which rounds them half away from zero.
fn parse_minor(text: &str, exponent: u32, round: bool) -> Result<i64, MoneyError> {
    let d = split_decimal(text)?;
    let keep = d.frac.len().min(usize::try_from(exponent).unwrap_or(usize::MAX));
    let (kept, extra) = d.frac.split_at(keep);
    let push = |mag: u64, digit: u8| mag.checked_mul(10)?.checked_add(u64::from(digit - b'0'));
    let mut mag: u64 = 0;
    for &b in d.int.iter().chain(kept) {
        mag = push(mag, b).ok_or(MoneyError::Overflow)?;
    }
    for _ in keep..usize::try_from(exponent).unwrap_or(usize::MAX) {
        mag = push(mag, b'0').ok_or(MoneyError::Overflow)?;
    }
    if extra.iter().any(|&b| b != b'0') {
        if !round {
            return Err(MoneyError::Inexact { text: echo(text, AMOUNT_ECHO), exponent });
        }
        if extra[0] >= b'5' {
            mag = mag.checked_add(1).ok_or(MoneyError::Overflow)?;
        }
    }
    if d.negative {
        0i64.checked_sub_unsigned(mag).ok_or(MoneyError::Overflow)
    } else {
        i64::try_from(mag).map_err(|_| MoneyError::Overflow)
    }
}

/// `minor` scaled by 10^-`exponent` as a plain decimal, e.g. (-5, 2) → `"-0.05"`.
fn decimal_string(minor: i64, exponent: u32) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let digits = minor.unsigned_abs().to_string();
    let e = usize::try_from(exponent).unwrap_or(usize::MAX);
    if e == 0 {
        return format!("{sign}{digits}");
    }
    if digits.len() > e {
        let (int, frac) = digits.split_at(digits.len() - e);
        format!("{sign}{int}.{frac}")
    } else {
        format!("{sign}0.{digits:0>e$}")
    }
}

impl Money {
    /// An amount of `minor` minor units of `currency`.
    pub const fn new(minor: i64, currency: Currency) -> Money {
        Money { minor, currency }
    }

    /// Parses a decimal exactly: `"100"`, `"100.5"`, `"100.50"`, `"-3.20"`, `"007.50"`,
    /// `"0.001"` for KWD. Fractional digits beyond the currency's exponent must be zeros
    /// (`"100.500"` is fine for USD, `"100.505"` is [`MoneyError::Inexact`]). Refuses empty
    /// text, `"-"`, `"."`, `"1."`, `".5"`, a leading `+`, spaces, thousands separators,
    /// exponent notation ([`MoneyError::Malformed`]) and amounts beyond `i64` minor units
    /// ([`MoneyError::Overflow`]).
    pub fn parse_exact(text: &str, currency: Currency) -> Result<Money, MoneyError> {
        parse_minor(text, currency.exponent(), false).map(|minor| Money::new(minor, currency))
    }

    /// The grammar of [`Money::parse_exact`], but extra fractional digits are rounded to the
    /// currency's exponent, half away from zero: `"100.505"` USD is 10051 minor units,
    /// `"-0.005"` is -1.
    pub fn parse_rounded(text: &str, currency: Currency) -> Result<Money, MoneyError> {
        parse_minor(text, currency.exponent(), true).map(|minor| Money::new(minor, currency))
    }

    /// A float from a shop database (REAL / DOUBLE columns): its shortest round-trip decimal
    /// form, then [`Money::parse_rounded`]. `19.99` → 1999, `0.1 + 0.2` → 30 (USD),
    /// `1234.5` JPY → 1235, `-0.0` → 0. NaN and infinities are [`MoneyError::NotFinite`];
    /// magnitudes beyond `i64` minor units are [`MoneyError::Overflow`].
    pub fn from_f64(value: f64, currency: Currency) -> Result<Money, MoneyError> {
        if !value.is_finite() {
            return Err(MoneyError::NotFinite);
        }
        // |value| ≥ 1e19 cannot fit (i64::MAX < 1e19, exponents are ≥ 0): refuse before
        // formatting hundreds of digits.
        if value.abs() >= 1e19 {
            return Err(MoneyError::Overflow);
        }
        // `Display` for f64 prints the shortest digits that round-trip, never in exponent
        // notation; if that ever changed, the parser would refuse the `e` as malformed.
        Money::parse_rounded(&value.to_string(), currency)
    }

    /// Worldpay style: `value` in units of 10^-`exponent`. The same exponent as the
    /// currency's is taken as is; a smaller one is scaled up exactly; a larger one is exact only
    /// when the dropped digits are zeros, else [`MoneyError::Inexact`].
    pub fn from_scaled(value: i64, exponent: u32, currency: Currency) -> Result<Money, MoneyError> {
        let own = currency.exponent();
        let minor = if exponent <= own {
            10i64
                .checked_pow(own - exponent)
                .and_then(|factor| value.checked_mul(factor))
                .ok_or(MoneyError::Overflow)?
        } else {
            match 10i64.checked_pow(exponent - own) {
                Some(divisor) if value % divisor == 0 => value / divisor,
                // 10^19 and up exceed every i64, so only zero divides exactly.
                None if value == 0 => 0,
                _ => {
                    // Spelled out only while that stays short; the echo is cut anyway.
                    let text = if exponent <= 32 {
                        decimal_string(value, exponent)
                    } else {
                        format!("{value}e-{exponent}")
                    };
                    return Err(MoneyError::Inexact {
                        text: echo(&text, AMOUNT_ECHO),
                        exponent: own,
                    });
                }
            }
        };
        Ok(Money::new(minor, currency))
    }

    /// The amount as a decimal with exactly the currency's exponent of fractional digits:
    /// `"100.00"`, `"5000"` (JPY), `"1.234"` (KWD), `"-3.20"`.
    pub fn to_decimal_string(&self) -> String {
        decimal_string(self.minor, self.currency.exponent())
    }

    /// `self - other`; `None` if the currencies differ or the result overflows.
    pub fn checked_sub(self, other: Money) -> Option<Money> {
        if self.currency != other.currency {
            return None;
        }
        self.minor.checked_sub(other.minor).map(|minor| Money::new(minor, self.currency))
    }

    /// `self + other`; `None` if the currencies differ or the result overflows.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        if self.currency != other.currency {
            return None;
        }
        self.minor.checked_add(other.minor).map(|minor| Money::new(minor, self.currency))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.to_decimal_string(), self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    fn exact(text: &str, code: &str) -> Result<i64, MoneyError> {
        Money::parse_exact(text, cur(code)).map(|m| m.minor)
    }

    fn rounded(text: &str, code: &str) -> Result<i64, MoneyError> {
        Money::parse_rounded(text, cur(code)).map(|m| m.minor)
    }

    fn is_malformed(r: Result<i64, MoneyError>) -> bool {
        matches!(r, Err(MoneyError::Malformed(_)))
    }

    #[test]
    fn table_is_sorted_unique_and_large() {
        for pair in ISO_4217.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].0, pair[1].0);
        }
        assert!(ISO_4217.len() >= 150, "{} entries", ISO_4217.len());
        for (code, exp) in ISO_4217 {
            assert!(code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()), "{code}");
            assert!(*exp <= 4, "{code}");
        }
        assert!(STRIPE_ZERO_DECIMAL.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn table_spot_checks() {
        for (code, exp) in [
            ("USD", 2),
            ("EUR", 2),
            ("GBP", 2),
            ("JPY", 0),
            ("KRW", 0),
            ("KWD", 3),
            ("BHD", 3),
            ("CLF", 4),
            ("ISK", 0),
            ("HUF", 2),
            ("VES", 2),
            ("SLE", 2),
            ("ZWG", 2),
            ("UYW", 4),
            ("UYI", 0),
            ("COU", 2),
            ("MGA", 2),
            ("XCG", 2),
            ("TND", 3),
            ("IQD", 3),
            ("LYD", 3),
        ] {
            assert_eq!(cur(code).exponent(), exp, "{code}");
        }
    }

    #[test]
    fn zero_decimal_set_is_exactly_iso() {
        let zero: Vec<&str> = ISO_4217.iter().filter(|(_, e)| *e == 0).map(|(c, _)| *c).collect();
        assert_eq!(
            zero,
            [
                "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
                "VND", "VUV", "XAF", "XOF", "XPF"
            ]
        );
    }

    #[test]
    fn stripe_exponents() {
        for code in STRIPE_ZERO_DECIMAL {
            assert_eq!(stripe_exponent(cur(code)), 0, "{code}");
        }
        assert_eq!(stripe_exponent(cur("MGA")), 0);
        assert_eq!(stripe_exponent(cur("ISK")), 2);
        assert_eq!(stripe_exponent(cur("USD")), 2);
        assert_eq!(stripe_exponent(cur("HUF")), 2);
        assert_eq!(stripe_exponent(cur("TWD")), 2);
        assert_eq!(stripe_exponent(cur("KWD")), 3);
    }

    #[test]
    fn currency_parse_is_case_insensitive() {
        for code in ["USD", "usd", "Usd", "uSd"] {
            let c = Currency::parse(code).unwrap();
            assert_eq!(c, Currency::USD);
            assert_eq!(c.code(), "USD");
            assert_eq!(c.to_string(), "USD");
        }
        assert_eq!("jpy".parse::<Currency>().unwrap(), Currency::JPY);
        for c in [Currency::USD, Currency::EUR, Currency::GBP, Currency::JPY] {
            assert_eq!(Currency::parse(c.code()), Ok(c));
        }
    }

    #[test]
    fn currency_parse_refusals() {
        for code in [
            "", "US", "USDD", " usd", "usd ", "XAU", "xxx", "XDR", "XAG", "XSU", "XTS", "XYZ",
            "U$D", "12A", "ÜSD", "HRK",
        ] {
            assert!(
                matches!(Currency::parse(code), Err(MoneyError::UnknownCurrency(_))),
                "{code:?}"
            );
        }
        let err = Currency::parse("XYZ").unwrap_err();
        assert_eq!(err.to_string(), r#"unknown currency "XYZ""#);
        let long = "A".repeat(100);
        let MoneyError::UnknownCurrency(echoed) = Currency::parse(&long).unwrap_err() else {
            panic!("wrong variant");
        };
        assert!(echoed.chars().count() <= CURRENCY_ECHO + 1, "{echoed}");
    }

    #[test]
    fn currency_serde() {
        assert_eq!(serde_json::to_string(&Currency::EUR).unwrap(), r#""EUR""#);
        assert_eq!(serde_json::from_str::<Currency>(r#""eur""#).unwrap(), Currency::EUR);
        assert!(serde_json::from_str::<Currency>(r#""XAU""#).is_err());
    }

    #[test]
    fn parse_exact_accepts() {
        for (text, code, minor) in [
            ("100", "USD", 10000),
            ("100.5", "USD", 10050),
            ("100.50", "USD", 10050),
            ("100.500", "USD", 10050),
            ("-3.20", "USD", -320),
            ("007.50", "USD", 750),
            ("0", "USD", 0),
            ("-0", "USD", 0),
            ("-0.00", "USD", 0),
            ("0.001", "KWD", 1),
            ("1.234", "KWD", 1234),
            ("5000", "JPY", 5000),
            ("5000.000", "JPY", 5000),
            ("1.2345", "CLF", 12345),
            ("2.51", "EUR", 251),
            ("92233720368547758.07", "USD", i64::MAX),
            ("-92233720368547758.08", "USD", i64::MIN),
            ("0000000000000000000000000001.00", "USD", 100),
        ] {
            assert_eq!(exact(text, code), Ok(minor), "{text} {code}");
        }
    }

    #[test]
    fn parse_exact_refuses() {
        for text in [
            "", "-", "+", ".", "1.", ".5", "-.5", "+1", " 1", "1 ", "1,000.00", "1 000", "1e3",
            "1E3", "1.5e2", "--1", "1.2.3", "0x10", "NaN", "inf", "١", "1_000", "−1",
        ] {
            assert!(is_malformed(exact(text, "USD")), "{text:?} gave {:?}", exact(text, "USD"));
        }
        assert_eq!(
            exact("100.505", "USD"),
            Err(MoneyError::Inexact { text: "100.505".into(), exponent: 2 })
        );
        assert!(matches!(exact("1.5", "JPY"), Err(MoneyError::Inexact { exponent: 0, .. })));
        assert!(matches!(exact("0.0001", "KWD"), Err(MoneyError::Inexact { exponent: 3, .. })));
        assert_eq!(exact("92233720368547758.08", "USD"), Err(MoneyError::Overflow));
        assert_eq!(exact("-92233720368547758.09", "USD"), Err(MoneyError::Overflow));
        assert_eq!(exact(&"9".repeat(500), "USD"), Err(MoneyError::Overflow));
        assert_eq!(exact("9223372036854775808", "JPY"), Err(MoneyError::Overflow));
    }

    #[test]
    fn error_messages_echo_at_most_32_chars() {
        let err = Money::parse_exact("1,000.00", Currency::USD).unwrap_err();
        assert_eq!(err.to_string(), r#"malformed amount: unexpected character ',' in "1,000.00""#);
        let err = Money::parse_exact("100.505", Currency::USD).unwrap_err();
        assert_eq!(err.to_string(), r#"amount "100.505" has more than 2 decimal places"#);
        let long = format!("1.{}x", "0".repeat(200));
        let MoneyError::Malformed(msg) = Money::parse_exact(&long, Currency::USD).unwrap_err()
        else {
            panic!("wrong variant");
        };
        assert!(msg.len() < 80, "{msg}");
        let long = format!("1.{}1", "0".repeat(200));
        let MoneyError::Inexact { text, .. } =
            Money::parse_exact(&long, Currency::USD).unwrap_err()
        else {
            panic!("wrong variant");
        };
        assert!(text.chars().count() <= AMOUNT_ECHO + 1, "{text}");
    }

    #[test]
    fn parse_rounded_half_away_from_zero() {
        for (text, code, minor) in [
            ("100.505", "USD", 10051),
            ("100.504", "USD", 10050),
            ("100.5049999", "USD", 10050),
            ("-100.505", "USD", -10051),
            ("-100.504", "USD", -10050),
            ("0.005", "USD", 1),
            ("-0.005", "USD", -1),
            ("0.0049", "USD", 0),
            ("-0.0049", "USD", 0),
            ("0.5", "JPY", 1),
            ("-0.5", "JPY", -1),
            ("1234.5", "JPY", 1235),
            ("1234.4999", "JPY", 1234),
            ("1.2345", "KWD", 1235),
            ("-1.2345", "KWD", -1235),
            ("19.99", "USD", 1999),
            ("007.50", "USD", 750),
        ] {
            assert_eq!(rounded(text, code), Ok(minor), "{text} {code}");
        }
        assert_eq!(rounded("92233720368547758.075", "USD"), Err(MoneyError::Overflow));
        assert_eq!(rounded("92233720368547758.074", "USD"), Ok(i64::MAX));
        for text in ["", "1.", ".5", "+1", "1e3", "1,000.00", " 1"] {
            assert!(is_malformed(rounded(text, "USD")), "{text:?}");
        }
    }

    #[test]
    fn from_f64_uses_shortest_decimal() {
        let usd = |f: f64| Money::from_f64(f, Currency::USD).map(|m| m.minor);
        assert_eq!(usd(19.99), Ok(1999));
        assert_eq!(usd(0.1 + 0.2), Ok(30));
        assert_eq!(usd(1.005), Ok(101)); // (1.005 * 100.0).round() would say 100
        assert_eq!(usd(-1.005), Ok(-101));
        assert_eq!(usd(0.125), Ok(13));
        assert_eq!(usd(-0.0), Ok(0));
        assert_eq!(usd(0.0), Ok(0));
        assert_eq!(usd(5e-324), Ok(0));
        assert_eq!(usd(1e-7), Ok(0));
        assert_eq!(usd(1_234_567_890.12), Ok(123_456_789_012));
        assert_eq!(usd(1e300), Err(MoneyError::Overflow));
        assert_eq!(usd(-1e300), Err(MoneyError::Overflow));
        assert_eq!(usd(1e21), Err(MoneyError::Overflow));
        assert_eq!(usd(1e17), Err(MoneyError::Overflow));
        assert_eq!(usd(f64::NAN), Err(MoneyError::NotFinite));
        assert_eq!(usd(f64::INFINITY), Err(MoneyError::NotFinite));
        assert_eq!(usd(f64::NEG_INFINITY), Err(MoneyError::NotFinite));
        assert_eq!(Money::from_f64(1234.5, Currency::JPY).map(|m| m.minor), Ok(1235));
        assert_eq!(Money::from_f64(1e18, Currency::JPY).map(|m| m.minor), Ok(10i64.pow(18)));
        assert_eq!(Money::from_f64(1.2345, cur("KWD")).map(|m| m.minor), Ok(1235));
    }

    #[test]
    fn from_scaled_cases() {
        let scaled =
            |v: i64, e: u32, code: &str| Money::from_scaled(v, e, cur(code)).map(|m| m.minor);
        assert_eq!(scaled(1000, 2, "EUR"), Ok(1000));
        assert_eq!(scaled(-1000, 2, "EUR"), Ok(-1000));
        assert_eq!(scaled(10, 0, "EUR"), Ok(1000));
        assert_eq!(scaled(15, 1, "EUR"), Ok(150));
        assert_eq!(scaled(1, 0, "KWD"), Ok(1000));
        assert_eq!(scaled(1000, 3, "EUR"), Ok(100));
        assert_eq!(scaled(500, 2, "JPY"), Ok(5));
        assert_eq!(scaled(0, 40, "USD"), Ok(0));
        assert_eq!(scaled(1_000_000, 6, "USD"), Ok(100));
        assert_eq!(
            scaled(1005, 3, "EUR"),
            Err(MoneyError::Inexact { text: "1.005".into(), exponent: 2 })
        );
        assert_eq!(
            scaled(-550, 2, "JPY"),
            Err(MoneyError::Inexact { text: "-5.50".into(), exponent: 0 })
        );
        assert!(matches!(scaled(1, 40, "USD"), Err(MoneyError::Inexact { .. })));
        assert!(matches!(scaled(i64::MAX, 100, "USD"), Err(MoneyError::Inexact { .. })));
        assert_eq!(scaled(i64::MAX, 0, "USD"), Err(MoneyError::Overflow));
        assert_eq!(scaled(i64::MIN / 10 - 1, 1, "USD"), Err(MoneyError::Overflow));
        assert_eq!(scaled(i64::MIN / 10, 1, "USD"), Ok(i64::MIN / 10 * 10));
        assert_eq!(scaled(i64::MAX, 2, "USD"), Ok(i64::MAX));
    }

    #[test]
    fn to_decimal_string_formats_and_round_trips() {
        for (minor, code, text) in [
            (10000, "USD", "100.00"),
            (-320, "USD", "-3.20"),
            (-5, "USD", "-0.05"),
            (5, "USD", "0.05"),
            (0, "USD", "0.00"),
            (5000, "JPY", "5000"),
            (-5000, "JPY", "-5000"),
            (0, "JPY", "0"),
            (1234, "KWD", "1.234"),
            (-1, "KWD", "-0.001"),
            (12345, "CLF", "1.2345"),
            (-7, "CLF", "-0.0007"),
            (i64::MAX, "USD", "92233720368547758.07"),
            (i64::MIN, "USD", "-92233720368547758.08"),
            (i64::MIN, "JPY", "-9223372036854775808"),
        ] {
            let money = Money::new(minor, cur(code));
            assert_eq!(money.to_decimal_string(), text, "{minor} {code}");
            assert_eq!(Money::parse_exact(text, cur(code)), Ok(money), "{text} {code}");
        }
        assert_eq!(Money::new(10000, Currency::USD).to_string(), "100.00 USD");
        assert_eq!(Money::new(-5, Currency::USD).to_string(), "-0.05 USD");
    }

    #[test]
    fn checked_arithmetic() {
        let usd = |m| Money::new(m, Currency::USD);
        assert_eq!(usd(1000).checked_sub(usd(250)), Some(usd(750)));
        assert_eq!(usd(250).checked_sub(usd(1000)), Some(usd(-750)));
        assert_eq!(usd(1000).checked_sub(Money::new(250, Currency::EUR)), None);
        assert_eq!(usd(i64::MIN).checked_sub(usd(1)), None);
        assert_eq!(usd(1000).checked_add(usd(250)), Some(usd(1250)));
        assert_eq!(usd(i64::MAX).checked_add(usd(1)), None);
        assert_eq!(usd(1).checked_add(Money::new(1, Currency::JPY)), None);
    }
}
