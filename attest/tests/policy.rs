//! Trust policy parsing: every inconsistency is refused with its reason,
//! key files are resolved through the caller.

#![allow(clippy::unwrap_used)]

use medguard_attest::{PolicyError, TrustPolicy};

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
