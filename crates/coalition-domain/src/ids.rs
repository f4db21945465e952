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

/// The longest merchant id a new registration may take, in bytes: short enough that the
/// file names made from it ([`file_name_stem`]) stay far below every file system's limit.
pub const MERCHANT_ID_LEN_MAX_BYTES: usize = 64;

/// Why an id cannot be taken by a new merchant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerchantIdError {
    #[error("is {len} bytes long; a new merchant id takes at most {MERCHANT_ID_LEN_MAX_BYTES}")]
    TooLong { len: usize },
    #[error("starts with {character:?}; a new merchant id starts with an ASCII letter or digit")]
    InvalidStart { character: char },
    #[error(
        "contains {character:?}; a new merchant id takes only ASCII letters, digits, '-', '_' and '.'"
    )]
    InvalidCharacter { character: char },
}

/// Checks an id for a new merchant: on top of the identifier rules, at most 64 bytes of
/// ASCII letters, digits, `-`, `_` and `.`, starting with a letter or a digit. Merchant ids
/// name files and folders of exports and statements, so the alphabet cannot form a path
/// (no `/`, no `:`, no `.` or `..`, no hidden file). Ids registered before this rule are
/// still read; [`file_name_stem`] keeps them safe.
pub fn check_new_merchant_id(text: &str) -> Result<(), MerchantIdError> {
    if text.len() > MERCHANT_ID_LEN_MAX_BYTES {
        return Err(MerchantIdError::TooLong { len: text.len() });
    }
    for (position, character) in text.chars().enumerate() {
        if character.is_ascii_alphanumeric() {
            continue;
        }
        if position == 0 {
            return Err(MerchantIdError::InvalidStart { character });
        }
        if !matches!(character, '-' | '_' | '.') {
            return Err(MerchantIdError::InvalidCharacter { character });
        }
    }
    Ok(())
}

/// Names that Windows reserves for devices in every folder, with any extension.
const WINDOWS_RESERVED_NAMES: [&str; 22] = [
    "con", "prn", "aux", "nul", "com1", "com2", "com3", "com4", "com5", "com6", "com7", "com8",
    "com9", "lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9",
];

/// A file name stem for an identifier, safe as one path component on every common file
/// system, and distinct for distinct identifiers. ASCII letters, digits, `-` and `_` stand
/// for themselves, and so does `.` except first and last; every other byte is written
/// `%XX` (upper-case hex), and so is the first character of a name Windows reserves
/// (`con`, `nul`, `com1`...). Since `%` never stands for itself, the stem decodes back to
/// exactly one identifier. The stem is never empty, `.` or `..`, never starts or ends with a
/// dot, never contains a separator, and is at most three times as long as the identifier.
pub fn file_name_stem(identifier: &str) -> String {
    let bytes = identifier.as_bytes();
    let device = identifier.split('.').next().unwrap_or("");
    let reserved = WINDOWS_RESERVED_NAMES
        .iter()
        .any(|name| name.eq_ignore_ascii_case(device));
    let mut stem = String::with_capacity(bytes.len());
    for (position, &byte) in bytes.iter().enumerate() {
        let plain = byte.is_ascii_alphanumeric()
            || byte == b'-'
            || byte == b'_'
            || (byte == b'.' && position > 0 && position + 1 < bytes.len());
        if plain && !(reserved && position == 0) {
            stem.push(char::from(byte));
        } else {
            stem.push_str(&format!("%{byte:02X}"));
        }
    }
    if stem.is_empty() {
        // No identifier is empty, but a name must never be.
        stem.push('%');
    }
    stem
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

            /// A file name stem for this identifier; see [`file_name_stem`].
            pub fn file_name_stem(&self) -> String {
                file_name_stem(&self.0)
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

    /// Decodes a stem back to the identifier, as a reader of an export would.
    fn decode(stem: &str) -> String {
        let mut bytes = Vec::new();
        let mut rest = stem.as_bytes();
        while let Some((&first, tail)) = rest.split_first() {
            if first == b'%' {
                let hex = std::str::from_utf8(&tail[..2]).unwrap();
                bytes.push(u8::from_str_radix(hex, 16).unwrap());
                rest = &tail[2..];
            } else {
                bytes.push(first);
                rest = tail;
            }
        }
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn file_name_stems_cannot_form_paths() {
        let hostile = [
            "..",
            ".",
            "../matrix",
            "../../x",
            "a/b",
            "/etc/passwd",
            ".hidden",
            "trailing.",
            "con",
            "CON",
            "nul.txt",
            "Com1",
            "lpt9.a.b",
            "console",
            "a:b",
            "tenant-001",
            "tenant.001",
        ];
        let mut seen = std::collections::HashSet::new();
        for id in hostile.iter().map(|id| id.to_string()).chain([
            "x".repeat(IDENTIFIER_LEN_MAX_BYTES),
            "/".repeat(IDENTIFIER_LEN_MAX_BYTES),
        ]) {
            let stem = file_name_stem(&id);
            assert!(!stem.is_empty(), "{id:?}");
            assert!(stem != "." && stem != "..", "{id:?} -> {stem:?}");
            assert!(
                !stem.starts_with('.') && !stem.ends_with('.'),
                "{id:?} -> {stem:?}"
            );
            assert!(
                stem.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'%')),
                "{id:?} -> {stem:?}"
            );
            let device = stem.split('.').next().unwrap().to_ascii_lowercase();
            assert!(
                !WINDOWS_RESERVED_NAMES.contains(&device.as_str()),
                "{id:?} -> {stem:?}"
            );
            assert!(stem.len() <= 3 * id.len(), "{id:?}");
            assert_eq!(decode(&stem), id, "a stem decodes to its identifier");
            assert!(seen.insert(stem), "two identifiers gave one stem");
        }
        assert_eq!(file_name_stem("tenant-001"), "tenant-001");
        assert_eq!(file_name_stem("tenant.001"), "tenant.001");
        assert_eq!(file_name_stem("../matrix"), "%2E.%2Fmatrix");
        assert_eq!(file_name_stem("con"), "%63on");
        assert_eq!(file_name_stem("console"), "console");
    }

    #[test]
    fn new_merchant_ids_cannot_form_paths() {
        assert_eq!(check_new_merchant_id("tenant-001"), Ok(()));
        assert_eq!(check_new_merchant_id("cinema_1.imax"), Ok(()));
        assert_eq!(check_new_merchant_id(&"m".repeat(64)), Ok(()));
        assert_eq!(
            check_new_merchant_id(&"m".repeat(65)),
            Err(MerchantIdError::TooLong { len: 65 })
        );
        for (id, character) in [
            ("..", '.'),
            (".", '.'),
            (".hidden", '.'),
            ("../matrix", '.'),
            ("-flag", '-'),
            ("_x", '_'),
        ] {
            assert_eq!(
                check_new_merchant_id(id),
                Err(MerchantIdError::InvalidStart { character }),
                "{id:?}"
            );
        }
        for (id, character) in [("a/b", '/'), ("a:b", ':'), ("a../b", '/')] {
            assert_eq!(
                check_new_merchant_id(id),
                Err(MerchantIdError::InvalidCharacter { character }),
                "{id:?}"
            );
        }
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
