//! UID validation (PS3.5 9.1) and PHI-safe error text.
//!
//! Why: rejection messages and logs name instances by their UIDs, and whatever a sender put into a UID
//! attribute (a patient name, an MRN) would otherwise be repeated in every response and log line. A
//! value is only ever echoed once it has the shape of a UID — at most 64 characters, digits and '.',
//! no empty component, no leading zero in a multi-digit component — which carries no free text.
//! Anything else is *described* (its length and what is wrong with it), never quoted. For the same
//! reason, error text from `dicom-rs` or a codec, which may quote element values, is redacted before it
//! reaches a message.
//!
//! An instance whose identifying UID is malformed is not rejected for it: real archives hold such files
//! (pydicom-data's `bad_sequence.dcm` carries a hexadecimal hash as its SOP Instance UID) and pydicom and
//! dcmtk read them. It goes on under a stand-in ([`identity`]): `2.25.` followed by a 128-bit keyed hash
//! of the value (the UUID-derived form of PS3.5 B.2), so the same bad value always names the same
//! study, series or instance — across restarts too, when the service keeps its key in its data directory
//! — and the value cannot be recovered from it (the key is random per service: a digits-only patient
//! number cannot be found by hashing candidates).

/// Trims the padding a UI value may carry (trailing NUL, surrounding spaces).
pub(crate) fn trim(raw: &[u8]) -> &[u8] {
    let is_pad = |b: &u8| *b == 0 || b.is_ascii_whitespace();
    let start = raw.iter().position(|b| !is_pad(b)).unwrap_or(raw.len());
    let end = raw
        .iter()
        .rposition(|b| !is_pad(b))
        .map_or(start, |i| i + 1);
    &raw[start..end]
}

/// What is wrong with a UID value (already trimmed), or `None` when it is valid.
pub(crate) fn problems(v: &[u8]) -> Option<String> {
    let mut found: Vec<String> = Vec::new();
    if v.len() > 64 {
        found.push(format!("{} characters (at most 64 allowed)", v.len()));
    }
    if v.iter().any(|b| !(b.is_ascii_digit() || *b == b'.')) {
        found.push("contains characters other than digits and '.'".to_string());
    }
    let components: Vec<&[u8]> = v.split(|b| *b == b'.').collect();
    if components.iter().any(|c| c.is_empty()) {
        found.push("has an empty component".to_string());
    }
    if components.iter().any(|c| c.len() > 1 && c[0] == b'0') {
        found.push("has a component with a leading zero".to_string());
    }
    if found.is_empty() {
        None
    } else {
        if v.len() <= 64 {
            found.insert(0, format!("{} characters", v.len()));
        }
        Some(found.join(", "))
    }
}

/// A UID attribute value: `Ok(None)` when absent or empty, `Ok(Some(uid))` when valid, `Err(description)`
/// naming the attribute and what is wrong (never the value) otherwise.
pub(crate) fn validate(raw: &[u8], name: &str) -> Result<Option<String>, String> {
    let v = trim(raw);
    if v.is_empty() {
        return Ok(None);
    }
    match problems(v) {
        None => Ok(Some(String::from_utf8_lossy(v).into_owned())),
        Some(p) => Err(format!("{name} is not a valid UID: {p}")),
    }
}

/// The identity an instance is known by for one UID attribute: the value when it is a valid UID, else
/// a stand-in that never contains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub uid: String,
    /// Set when `uid` is a stand-in: what was wrong with the value (described, not quoted).
    pub problem: Option<String>,
}

/// See [`Identity`]; `None` when the value is absent or empty.
pub(crate) fn identity(raw: &[u8], name: &str) -> Option<Identity> {
    let v = trim(raw);
    if v.is_empty() {
        return None;
    }
    Some(match problems(v) {
        None => Identity {
            uid: String::from_utf8_lossy(v).into_owned(),
            problem: None,
        },
        Some(p) => {
            let uid = stand_in(v);
            tracing::info!(
                attribute = name,
                stand_in = %uid,
                "{name} is not a valid UID ({p}); the instance goes on under a stand-in UID"
            );
            Identity {
                uid,
                problem: Some(format!("{name} is not a valid UID: {p}")),
            }
        }
    })
}

/// The key behind stand-in UIDs. A service with a data directory sets it once at start from its event
/// log ([`set_stand_in_key`]), so a malformed UID maps to the same stand-in across restarts and one
/// study stays one study; without that, a random key per process.
static KEY: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();

/// 16 random bytes (from the OS-seeded hasher keys of the standard library).
pub fn random_key() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut key = [0u8; 16];
    for half in key.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    key
}

/// Sets the stand-in key; false when a key was already in use (the first one stays).
pub fn set_stand_in_key(key: [u8; 16]) -> bool {
    KEY.set(key).is_ok()
}

/// `2.25.` + the first 128 bits of SHA-256(key ‖ value), in decimal (at most 44 characters).
fn stand_in(value: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let key = KEY.get_or_init(random_key);
    let digest = Sha256::new()
        .chain_update(key)
        .chain_update(value)
        .finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    format!("2.25.{}", u128::from_be_bytes(first))
}

/// One line of error text from `dicom-rs` or a codec with anything that may be an element value
/// removed: quoted or back-ticked text becomes `…`, a token dump is dropped, and each part is capped.
pub(crate) fn redact_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![redact(&e.to_string())];
    let mut cur = e.source();
    while let Some(c) = cur {
        if parts.len() > 8 {
            break;
        }
        parts.push(redact(&c.to_string()));
        cur = c.source();
    }
    parts.dedup();
    parts.join(": ")
}

/// See [`redact_chain`].
pub(crate) fn redact(s: &str) -> String {
    const MAX: usize = 240;
    if let Some(i) = s.find("Unexpected token") {
        return format!("{}unexpected data set token", &s[..i]);
    }
    let mut out = String::with_capacity(s.len().min(MAX));
    let mut chars = s.chars().peekable();
    let mut prev: Option<char> = None;
    while let Some(c) = chars.next() {
        let opens = match c {
            '`' | '"' => true,
            // an apostrophe inside a word ("couldn't") is not a quote
            '\'' => prev.is_none_or(|p| !p.is_alphanumeric()),
            _ => false,
        };
        if opens {
            // skip to the matching close (or the end)
            for d in chars.by_ref() {
                if d == c {
                    break;
                }
            }
            out.push(c);
            out.push('…');
            out.push(c);
            prev = Some(c);
            continue;
        }
        out.push(c);
        prev = Some(c);
        if out.len() >= MAX {
            out.push('…');
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_uids() {
        for ok in [
            "1.2.840.10008.1.2.1",
            "0",
            "1.0.2",
            "2.25.123456789012345678901234567890",
        ] {
            assert_eq!(problems(ok.as_bytes()), None, "{ok}");
        }
        assert_eq!(
            validate(b"1.2.3\0", "X").expect("valid"),
            Some("1.2.3".to_string())
        );
        assert_eq!(validate(b"  \0", "X").expect("empty"), None);
    }

    #[test]
    fn invalid_uids_are_described_not_echoed() {
        let long = format!("1.2.{}", "3".repeat(66)); // 70 characters
        let e = validate(long.as_bytes(), "SOPInstanceUID (0008,0018)").expect_err("too long");
        assert_eq!(
            e,
            "SOPInstanceUID (0008,0018) is not a valid UID: 70 characters (at most 64 allowed)"
        );
        let e = validate(b"DOE^JOHN.1", "StudyInstanceUID (0020,000D)").expect_err("letters");
        assert!(!e.contains("DOE"), "{e}");
        assert!(
            e.contains("10 characters") && e.contains("other than digits"),
            "{e}"
        );
        assert!(validate(b"1..2", "X")
            .expect_err("empty")
            .contains("empty component"));
        assert!(validate(b"1.02", "X")
            .expect_err("zero")
            .contains("leading zero"));
        assert!(validate(b".1", "X").is_err());
        assert!(validate(b"1.", "X").is_err());
    }

    #[test]
    fn an_invalid_uid_gets_a_stable_stand_in_that_does_not_contain_it() {
        let bad = b"DOE^JOHN.12345";
        let a = identity(bad, "StudyInstanceUID (0020,000D)").expect("present");
        let b = identity(bad, "StudyInstanceUID (0020,000D)").expect("present");
        assert_eq!(a, b, "the same value names the same study");
        assert!(a.uid.starts_with("2.25.") && a.uid.len() <= 44, "{}", a.uid);
        assert_eq!(
            problems(a.uid.as_bytes()),
            None,
            "the stand-in is a valid UID"
        );
        assert!(!a.uid.contains("12345") || !a.uid.contains("DOE"));
        let problem = a.problem.expect("described");
        assert!(
            !problem.contains("DOE") && problem.contains("StudyInstanceUID"),
            "{problem}"
        );
        let other = identity(b"DOE^JANE.12345", "X").expect("present");
        assert_ne!(other.uid, a.uid);
        let good = identity(b"1.2.3\0", "X").expect("present");
        assert_eq!(
            good,
            Identity {
                uid: "1.2.3".into(),
                problem: None
            }
        );
        assert_eq!(identity(b" ", "X"), None);
    }

    #[test]
    fn redaction_drops_quoted_values() {
        assert_eq!(
            redact("Invalid Date value element `DOE^JOHN` at position 12"),
            "Invalid Date value element `…` at position 12"
        );
        assert_eq!(redact("name \"SECRET\" here"), "name \"…\" here");
        assert_eq!(redact("couldn't read 'X'"), "couldn't read '…'");
        assert_eq!(
            redact("Could not read data set token: Unexpected token PrimitiveValue(Str(\"A\"))"),
            "Could not read data set token: unexpected data set token"
        );
    }
}
