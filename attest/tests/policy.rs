//! Trust policy parsing: every inconsistency is refused with its reason,
//! key files are resolved through the caller.

#![allow(clippy::unwrap_used)]

use medguard_attest::{PolicyError, Sha256Digest, TrustPolicy};

const P256: &str = include_str!("../../tests/fixtures/signing/p256.pub.pem");
const P384: &str = include_str!("../../tests/fixtures/signing/p384.pub.pem");

fn parse(text: &str) -> Result<TrustPolicy, PolicyError> {
    TrustPolicy::parse(text, |file| match file {
        "p384.pub.pem" => Ok(P384.to_owned()),
        other => Err(format!("{other}: no such file")),
    })
}

fn invalid(text: &str, why: &str) {
    let err = parse(text).unwrap_err().to_string();
    assert!(err.contains(why), "{err:?} should say {why:?}");
}

#[test]
fn a_policy_with_inline_and_file_keys_parses() {
    let policy = parse(&format!(
        "schema = \"medguard.policy/v1\"\n\n[[keys]]\nname = \"a\"\npublic_key = \"\"\"\n{P256}\"\"\"\n\n[[keys]]\nname = \"b\"\npublic_key_file = \"p384.pub.pem\"\n\n[[models]]\nname = \"m\"\nsigners = [\"a\", \"b\"]\nmin_version = \"2.0.0\"\n"
    ))
    .unwrap();
    // Without a hint every unrevoked key is a candidate; with one, that key.
    assert_eq!(policy.candidate_keys(None).unwrap().len(), 2);
    let b = policy.candidate_keys(None).unwrap()[1].fingerprint();
    let named = policy.candidate_keys(Some(&b.to_string())).unwrap();
    assert_eq!(named[0].name(), "b");
    let unknown = policy.candidate_keys(Some("00")).unwrap_err().to_string();
    assert!(unknown.contains("rule `keys`"), "{unknown}");
}

#[test]
fn inconsistent_policies_are_refused_with_the_reason() {
    let key =
        |name: &str| format!("[[keys]]\nname = \"{name}\"\npublic_key_file = \"p384.pub.pem\"\n");
    let head = "schema = \"medguard.policy/v1\"\n";
    invalid(
        "schema = \"medguard.policy/v9\"\n",
        "this build understands",
    );
    invalid(&format!("{head}{}{}", key("a"), key("a")), "listed twice");
    invalid(
        &format!("{head}{}{}", key("a"), key("b")),
        "are the same key",
    );
    invalid(
        &format!("{head}[[keys]]\nname = \"a\"\npublic_key_file = \"nope.pem\"\n"),
        "nope.pem: no such file",
    );
    invalid(
        &format!("{head}[[keys]]\nname = \"a\"\npublic_key = \"not a key\"\n"),
        "public key is not usable",
    );
    invalid(&format!("{head}[[keys]]\nname = \"a\"\n"), "exactly one of");
    invalid(
        &format!("{head}revoked_keys = [\"ABC\"]\n"),
        "revoked_keys: not a SHA-256 digest",
    );
    invalid(
        &format!("{head}{}[[models]]\nname = \"m\"\nsigners = []\n", key("a")),
        "names no signers",
    );
    invalid(
        &format!(
            "{head}{}[[models]]\nname = \"m\"\nsigners = [\"a\"]\n[[models]]\nname = \"m\"\nsigners = [\"a\"]\n",
            key("a")
        ),
        "model \"m\" is listed twice",
    );
    invalid(
        &format!(
            "{head}{}[[models]]\nname = \"m\"\nsigners = [\"a\"]\nmin_version = \"1.x\"\n",
            key("a")
        ),
        "not valid TOML of the expected shape",
    );
}

/// A policy whose one key comes from `k.pem`, read as `pem`.
fn digest_with_key_file(pem: &str) -> Sha256Digest {
    TrustPolicy::parse(KEY_FILE_POLICY, |_| Ok(pem.to_owned()))
        .unwrap()
        .sha256()
}

const KEY_FILE_POLICY: &str =
    "schema = \"medguard.policy/v1\"\n\n[[keys]]\nname = \"a\"\npublic_key_file = \"k.pem\"\n";

#[test]
fn the_policy_digest_covers_the_key_files() {
    // Same text, same keys: same digest.
    assert_eq!(digest_with_key_file(P256), digest_with_key_file(P256));
    // Same text, the file swapped for another key: another digest, though
    // not a byte of the TOML changed.
    assert_ne!(digest_with_key_file(P256), digest_with_key_file(P384));
    // The exact PEM text counts, not only the key it decodes to: the same
    // key with CRLF line endings is another digest.
    assert_ne!(
        digest_with_key_file(P256),
        digest_with_key_file(&P256.replace('\n', "\r\n"))
    );
    // It is not the digest of the text alone.
    assert_ne!(
        digest_with_key_file(P256),
        Sha256Digest::of(KEY_FILE_POLICY.as_bytes())
    );
}

#[test]
fn the_policy_digest_follows_its_documented_encoding() {
    // Recomputed here from the documentation of `TrustPolicy::sha256`:
    // every part length-prefixed (big-endian u64) after the domain tag.
    let mut input = Vec::new();
    let mut field = |bytes: &[u8]| {
        input.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        input.extend_from_slice(bytes);
    };
    field(b"medguard.policy-digest/v1");
    field(KEY_FILE_POLICY.as_bytes());
    field(&1u64.to_be_bytes());
    field(b"a");
    field(P256.as_bytes());
    assert_eq!(digest_with_key_file(P256), Sha256Digest::of(&input));
}

#[test]
fn an_inline_key_and_the_same_key_from_a_file_give_different_digests() {
    // Deliberately: the policy texts differ, and the digest covers the text.
    // Both are stable, so a deployment that keeps its policy as it is never
    // sees a `policy-changed` entry.
    let inline = format!(
        "schema = \"medguard.policy/v1\"\n\n[[keys]]\nname = \"a\"\npublic_key = \"\"\"\n{P256}\"\"\"\n"
    );
    let inline_digest = parse(&inline).unwrap().sha256();
    assert_eq!(inline_digest, parse(&inline).unwrap().sha256());
    assert_ne!(inline_digest, digest_with_key_file(P256));
}
