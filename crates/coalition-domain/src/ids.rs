//! Identifiers that arrive from partners. Each can only be built through a checking
//! constructor, so an identifier inside the core is always within its limits.

use std::fmt;

/// The longest identifier accepted anywhere, in bytes. Long enough for UUIDs and the
/// composite ids POS systems make, short enough to keep index rows small.
pub const IDENTIFIER_LEN_MAX_BYTES: usize = 128;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("is empty")]
    Empty,
    #[error("is {len} bytes long, the limit is {IDENTIFIER_LEN_MAX_BYTES}")]
    TooLong { len: usize },
    #[error(
        "contains the character {character:?}; allowed are ASCII letters, digits and - _ . : /"
    )]
    InvalidCharacter { character: char },
}

/// Checks the shared identifier rules: 1 to 128 bytes of ASCII letters, digits and `-_.:/`.
/// A narrow alphabet keeps identifiers safe in CSV cells, file names and log lines.
pub fn check_identifier(text: &str) -> Result<(), IdentifierError> {
    if text.is_empty() {
        return Err(IdentifierError::Empty);
    }
    if text.len() > IDENTIFIER_LEN_MAX_BYTES {
        return Err(IdentifierError::TooLong { len: text.len() });
    }
    if let Some(character) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/')))
    {
        return Err(IdentifierError::InvalidCharacter { character });
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Builds the identifier after checking it against the identifier rules.
            pub fn new(text: impl Into<String>) -> Result<Self, IdentifierError> {
                let text = text.into();
                check_identifier(&text)?;
                Ok(Self(text))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(&self.0)
            }
        }
    };
}

identifier!(
    /// A partner of the alliance: a tenant, cinema, restaurant or parking operator.
    MerchantId
);
identifier!(
    /// An alliance member. Opaque: no personal data is needed to clear points.
    MemberId
);
identifier!(
    /// One of a merchant's signing keys.
    KeyId
);
identifier!(
    /// The merchant's own id for a transaction; the idempotency key together with the merchant.
    MerchantTransactionId
);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<(), IdentifierError>) {
        assert_eq!(check_identifier(input), expected, "input {input:?}");
    }

    #[test]
    fn identifier_boundaries() {
        check("a", Ok(()));
        check("store-12/pos:3_a.b", Ok(()));
        check("", Err(IdentifierError::Empty));
        check(&"x".repeat(128), Ok(()));
        check(&"x".repeat(129), Err(IdentifierError::TooLong { len: 129 }));
        check(
            "a b",
            Err(IdentifierError::InvalidCharacter { character: ' ' }),
        );
        check(
            "=cmd",
            Err(IdentifierError::InvalidCharacter { character: '=' }),
        );
        check(
            "é",
            Err(IdentifierError::InvalidCharacter { character: 'é' }),
        );
    }
}
