//! Generated credentials: random from the OS CSPRNG, never logged.

use std::fmt;

use rand::{TryRng, rngs::SysRng};

/// Characters of generated passwords: valid for RDS master passwords (no
/// `/`, `"`, `@` or space) and free of quotes, backslashes and `$`, so they
/// survive SQL literals, shells and connection strings unescaped.
pub const PASSWORD_ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~!#%^*()+=,:;?";
/// Length of generated passwords (about 250 bits of entropy).
pub const PASSWORD_LENGTH: usize = 40;

/// A secret string whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a secret.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Credentials as stored in Vault, with the KV version they came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCredentials {
    /// Login name.
    pub username: String,
    /// Password.
    pub password: Password,
    /// KV v2 version holding them; rotation increases it.
    pub version: u64,
}

/// A new password from the operating system's CSPRNG, uniform over
/// [`PASSWORD_ALPHABET`] (rejection sampling, no modulo bias).
pub fn generate_password() -> Result<Password, String> {
    let alphabet = PASSWORD_ALPHABET.len();
    // Largest multiple of the alphabet size that fits in a byte.
    let limit = 256 - (256 % alphabet);
    let mut out = String::with_capacity(PASSWORD_LENGTH);
    let mut buf = [0u8; 64];
    while out.len() < PASSWORD_LENGTH {
        SysRng
            .try_fill_bytes(&mut buf)
            .map_err(|e| format!("the OS random source failed: {e}"))?;
        for &b in &buf {
            if usize::from(b) < limit && out.len() < PASSWORD_LENGTH {
                out.push(char::from(PASSWORD_ALPHABET[usize::from(b) % alphabet]));
            }
        }
    }
    Ok(Password(out))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn passwords_are_long_distinct_and_rds_safe() {
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let p = generate_password().unwrap();
            assert_eq!(p.expose().len(), PASSWORD_LENGTH);
            assert!(!p.expose().contains(['/', '"', '@', ' ', '\'', '\\', '$']));
            assert!(seen.insert(p.expose().to_owned()));
        }
        assert_eq!(
            format!("{:?}", generate_password().unwrap()),
            "Password(<redacted>)"
        );
    }

    #[test]
    fn every_character_of_the_alphabet_appears() {
        let all: HashSet<char> = (0..100)
            .flat_map(|_| {
                generate_password()
                    .unwrap()
                    .expose()
                    .chars()
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(all.len(), PASSWORD_ALPHABET.len());
    }
}
