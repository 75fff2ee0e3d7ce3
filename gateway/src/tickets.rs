//! TLS session tickets under keys the fleet shares (`tls.session_ticket_keys`), so that a
//! citizen resumes on any node and across a node's restart, not only with the process that
//! issued its ticket.
//!
//! The file holds one secret per line; the first seals new tickets, every one opens them
//! (rotation: put a new secret first, roll it out, drop the old one a day later). A ticket
//! is never sealed under a secret itself: each secret gives a key per 6-hour period of Unix
//! time, derived with HMAC-SHA256, and a ticket opens only with its period's key or the
//! next one's (and the one before, for nodes whose clocks differ by a little). So a ticket
//! resumes for at most 12 hours however long a secret stays in the file, as the process's
//! own keys do — the lifetime is in the keys, not in a field of the ticket a client holds.
//!
//! Layout of a ticket: the key's name (16 bytes, derived like the key) ‖ a random nonce (12)
//! ‖ the session sealed with ChaCha20-Poly1305, the name as associated data.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// How long one derived key seals tickets.
pub const PERIOD_SECONDS: u64 = 6 * 60 * 60;
/// The shortest secret accepted: 256 bits.
pub const MIN_SECRET_BYTES: usize = 32;
/// The most secrets a file may hold (each costs three key derivations per period).
pub const MAX_SECRETS: usize = 8;
const NAME_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// The longest ticket opened. A session as the gateway's listeners keep it (no client
/// certificates) is ~100–200 bytes; a longer ticket is refused before any key is tried, so
/// a client cannot make the gateway decrypt kilobytes per handshake. (rustls' own ticketer
/// bounds it by the longest it has sealed, which a node that has sealed none would not
/// know here.)
pub const MAX_TICKET: usize = 2048;

/// One period's key from one secret.
struct Key {
    name: [u8; NAME_LEN],
    key: LessSafeKey,
}

/// The keys of the periods around `period`, newest secret first.
struct Keys {
    period: u64,
    all: Vec<Key>,
}

/// The fleet's ticketer: rustls asks it to seal and open tickets.
pub struct FleetTickets {
    secrets: Vec<hmac::Key>,
    /// `None` only if a derivation failed (it cannot for keys of these lengths): then no
    /// ticket is sealed or opened, and clients make full handshakes.
    keys: Mutex<Option<Arc<Keys>>>,
    random: SystemRandom,
}

impl std::fmt::Debug for FleetTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetTickets").field("secrets", &self.secrets.len()).finish_non_exhaustive()
    }
}

/// HMAC-SHA256 under the secret of what is derived and the period's number.
fn derive(secret: &hmac::Key, what: &[u8], period: u64) -> hmac::Tag {
    let mut mac = hmac::Context::with_key(secret);
    mac.update(b"edgegate tls ticket ");
    mac.update(what);
    mac.update(&period.to_be_bytes());
    mac.sign()
}

fn now_period() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()) / PERIOD_SECONDS
}

impl Key {
    fn derive(secret: &hmac::Key, period: u64) -> Option<Key> {
        let mut name = [0; NAME_LEN];
        name.copy_from_slice(derive(secret, b"name", period).as_ref().get(..NAME_LEN)?);
        // A SHA-256 tag is the 32 bytes a ChaCha20-Poly1305 key takes.
        let key = UnboundKey::new(&CHACHA20_POLY1305, derive(secret, b"key", period).as_ref()).ok()?;
        Some(Key { name, key: LessSafeKey::new(key) })
    }
}

impl Keys {
    /// The first key is the one that seals: the first secret's, this period's.
    fn derive(secrets: &[hmac::Key], period: u64) -> Option<Keys> {
        let mut all = Vec::with_capacity(secrets.len() * 3);
        for secret in secrets {
            for p in [period, period.saturating_sub(1), period + 1] {
                all.push(Key::derive(secret, p)?);
            }
        }
        Some(Keys { period, all })
    }
}

impl FleetTickets {
    /// Reads the secrets from `path` (a regular file of at most 1 MiB): one per line,
    /// blank lines and lines starting with `#` skipped, each at least
    /// [`MIN_SECRET_BYTES`] bytes (its surrounding whitespace not counted), at most
    /// [`MAX_SECRETS`], no two the same.
    pub fn load(path: &std::path::Path) -> Result<FleetTickets, String> {
        let text = edgegate_config::files::read_text(path, edgegate_config::files::KEY_FILE)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut secrets: Vec<Vec<u8>> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "{} line {}: the secret is {} bytes; at least {MIN_SECRET_BYTES} are needed (e.g. `openssl rand -base64 32`)",
                    path.display(),
                    n + 1,
                    line.len()
                ));
            }
            if secrets.iter().any(|s| s == line.as_bytes()) {
                return Err(format!("{} line {}: the same secret as an earlier line", path.display(), n + 1));
            }
            secrets.push(line.as_bytes().to_vec());
        }
        if secrets.is_empty() {
            return Err(format!("{}: no secret (one per line, the first seals new tickets)", path.display()));
        }
        if secrets.len() > MAX_SECRETS {
            return Err(format!("{}: {} secrets; at most {MAX_SECRETS}", path.display(), secrets.len()));
        }
        Ok(FleetTickets::new(&secrets))
    }

    /// A ticketer under `secrets` as given, the first sealing.
    pub fn new(secrets: &[Vec<u8>]) -> FleetTickets {
        let secrets: Vec<hmac::Key> = secrets.iter().map(|s| hmac::Key::new(hmac::HMAC_SHA256, s)).collect();
        let keys = Keys::derive(&secrets, now_period()).map(Arc::new);
        FleetTickets { secrets, keys: Mutex::new(keys), random: SystemRandom::new() }
    }

    /// The keys for `period`, derived again when it has moved on.
    fn keys_at(&self, period: u64) -> Option<Arc<Keys>> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.as_ref().is_none_or(|k| k.period != period) {
            *keys = Keys::derive(&self.secrets, period).map(Arc::new);
        }
        keys.clone()
    }

    fn seal_at(&self, period: u64, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys_at(period)?;
        let key = keys.all.first()?;
        let mut nonce = [0; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        key.key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(key.name), &mut body).ok()?;
        out.extend_from_slice(&body);
        (out.len() <= MAX_TICKET).then_some(out)
    }

    fn open_at(&self, period: u64, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN + TAG_LEN || ticket.len() > MAX_TICKET {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.keys_at(period)?;
        let key = keys.all.iter().find(|k| k.name[..] == *name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain = key.key.open_in_place(nonce, Aad::from(&key.name), &mut body).ok()?;
        Some(plain.to_vec())
    }
}

impl rustls::server::ProducesTickets for FleetTickets {
    fn enabled(&self) -> bool {
        true
    }

    /// What a client is told: the least a ticket is good for (sealed at the end of a
    /// period, it opens through the next).
    fn lifetime(&self) -> u32 {
        PERIOD_SECONDS as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal_at(now_period(), plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open_at(now_period(), cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(c: char) -> Vec<u8> {
        c.to_string().repeat(MIN_SECRET_BYTES).into_bytes()
    }

    #[test]
    fn a_ticket_opens_on_any_node_with_the_secret_for_two_periods_and_no_longer() {
        let a = FleetTickets::new(&[secret('a')]);
        let b = FleetTickets::new(&[secret('a')]);
        let p = now_period();
        let t = a.seal_at(p, b"session").expect("sealed");
        assert_eq!(b.open_at(p, &t).as_deref(), Some(&b"session"[..]), "another node, same secret");
        assert_eq!(b.open_at(p + 1, &t).as_deref(), Some(&b"session"[..]), "the next period");
        assert_eq!(b.open_at(p - 1, &t).as_deref(), Some(&b"session"[..]), "a clock a little behind");
        assert_eq!(b.open_at(p + 2, &t), None, "two periods on: expired");
        assert_eq!(b.open_at(p - 2, &t), None);
        assert_eq!(b.open_at(p, &t).as_deref(), Some(&b"session"[..]), "back in its period");
        let t2 = a.seal_at(p, b"session").expect("sealed");
        assert_ne!(t, t2, "a nonce of its own each time");
    }

    #[test]
    fn another_secret_or_any_changed_byte_opens_nothing() {
        let a = FleetTickets::new(&[secret('a')]);
        let other = FleetTickets::new(&[secret('b')]);
        let p = now_period();
        let t = a.seal_at(p, b"session state").expect("sealed");
        assert_eq!(other.open_at(p, &t), None, "another fleet's secret");
        for i in 0..t.len() {
            let mut bad = t.clone();
            bad[i] ^= 0x01;
            assert_eq!(a.open_at(p, &bad), None, "byte {i} flipped");
        }
        assert_eq!(a.open_at(p, &t[..t.len() - 1]), None, "cut");
        assert_eq!(a.open_at(p, &[t.clone(), vec![0]].concat()), None, "longer");
        let long = a.seal_at(p, &[7; MAX_TICKET - NAME_LEN - NONCE_LEN - TAG_LEN]).expect("the longest sealed");
        assert_eq!(a.open_at(p, &long).map(|s| s.len()), Some(MAX_TICKET - 44));
        assert_eq!(a.seal_at(p, &[7; MAX_TICKET - 43]), None, "longer than any ticket opened: not sealed");
        let mut over = long.clone();
        over.push(0);
        assert_eq!(a.open_at(p, &over), None, "over the bound: refused before a key is tried");
        assert_eq!(a.open_at(p, &t[..NAME_LEN + NONCE_LEN + TAG_LEN - 1]), None, "shorter than a head");
        assert_eq!(a.open_at(p, &[]), None);
    }

    #[test]
    fn rotation_seals_with_the_first_secret_and_opens_with_every_one() {
        let old = FleetTickets::new(&[secret('o')]);
        let rotated = FleetTickets::new(&[secret('n'), secret('o')]);
        let new_only = FleetTickets::new(&[secret('n')]);
        let p = now_period();
        let from_old = old.seal_at(p, b"s").expect("sealed");
        let from_rotated = rotated.seal_at(p, b"s").expect("sealed");
        assert_eq!(rotated.open_at(p, &from_old).as_deref(), Some(&b"s"[..]), "the old secret still opens");
        assert_eq!(new_only.open_at(p, &from_rotated).as_deref(), Some(&b"s"[..]), "sealed with the new one");
        assert_eq!(old.open_at(p, &from_rotated), None);
        assert_eq!(new_only.open_at(p, &from_old), None, "the old secret dropped");
    }

    #[test]
    fn a_secrets_file_is_held_to_its_rules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |text: &str| {
            let p = dir.path().join("keys");
            std::fs::write(&p, text).expect("write");
            FleetTickets::load(&p).map(|t| t.secrets.len())
        };
        let long = "k".repeat(44);
        assert_eq!(file(&format!("# rotated 2026-12-06\n{long}\n\n{}\n", "j".repeat(32))), Ok(2));
        let short = file(&format!("{}\n", "s".repeat(31))).expect_err("short");
        assert!(short.contains("line 1: the secret is 31 bytes; at least 32"), "{short}");
        assert!(file(&format!("{long}\n{long}\n")).expect_err("dup").contains("line 2: the same secret"));
        assert!(file("# none\n\n").expect_err("empty").contains("no secret"));
        let many: String = (0..9).map(|i| format!("{i}{}\n", "x".repeat(40))).collect();
        assert!(file(&many).expect_err("many").contains("9 secrets; at most 8"));
        let missing = FleetTickets::load(&dir.path().join("absent")).expect_err("missing");
        assert!(missing.starts_with("cannot read"), "{missing}");
    }
}
