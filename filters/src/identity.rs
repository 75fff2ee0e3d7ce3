//! Identity (request path step 4): verifies `Authorization: Bearer` JWTs (RS256, ES256,
//! EdDSA) against the keys of a JWKS file — signature, `exp`/`nbf` with leeway, `iss`,
//! `aud` — and turns valid claims into the policy's `input.user`. Identity never comes
//! from any other client-supplied header. Verified tokens are remembered; each client
//! address has a budget of checks of tokens that are not.

use std::sync::Arc;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use edgegate_config::Jwt;

/// A verified citizen, as the token's claims said when it was verified (immutable: the
/// policy's view of it is built once, with it).
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    id: String,
    role: Option<String>,
    /// The policy's `input.user`: a token is verified once and then sent with every
    /// request, each of which shares this.
    input: regorus::Value,
    /// The policy's decisions for this user's requests, while the token is remembered.
    pub(crate) decisions: crate::policy::Remembered,
}

impl User {
    /// The citizen `id` (the `sub` claim), with the configured role claim's value as `role`
    /// and every claim.
    pub fn new(id: String, role: Option<String>, claims: &serde_json::Map<String, serde_json::Value>) -> User {
        let input = crate::policy::user_input(&id, role.as_deref(), claims);
        User { id, role, input, decisions: Default::default() }
    }

    /// The `sub` claim.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The configured role claim, when present and a string.
    pub fn role(&self) -> Option<&str> {
        self.role.as_deref()
    }

    /// `input.user` (see [`crate::policy::input`]).
    pub fn input(&self) -> &regorus::Value {
        &self.input
    }
}

/// What the bearer token (or its absence) established.
#[derive(Debug, Clone, PartialEq)]
pub enum Identity {
    /// No `Authorization: Bearer` header.
    Anonymous,
    /// A token was sent but is not acceptable; the reason is for logs, never the client.
    Invalid(&'static str),
    /// A token not verified recently, from a client that has used up its budget of
    /// signature checks (`new_tokens_per_client`): not checked; try again after this long.
    Throttled(std::time::Duration),
    /// Shared with the verified-token cache: a request takes a reference, not a copy.
    User(Arc<User>),
    /// A token whose signature must be checked, asked with [`TokenCheck::Later`]: its
    /// client's budget is charged; ask again with [`TokenCheck::Charged`] once the worker's
    /// turn for a dear step is held.
    AwaitsTurn,
}

/// When the signature of a token not remembered is checked, for a caller that lets a
/// worker's dear steps take turns with its other work (a check costs 18–40 µs of the
/// worker's CPU; a flood of them run back to back holds up every request behind them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// Now, charged to the client's budget.
    Now,
    /// Not now: the client's budget is charged and a token that parses and names a key
    /// gets [`Identity::AwaitsTurn`] (one that does not is refused at once).
    Later,
    /// Now, the budget having been charged by the `Later` call before.
    Charged,
}

const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Keys and rules for verifying tokens; built when the config snapshot is built.
pub struct Verifier {
    keys: Vec<Key>,
    validations: Vec<(Algorithm, Validation)>,
    role_claim: String,
    leeway_secs: u64,
    /// Tokens already verified (see [`Verified`]): a citizen sends the same token with
    /// every request, and a signature check costs 18–40 µs.
    verified: Verified,
    /// Tokens refused for good: a client retrying a stale token, or a flood replaying a
    /// forged one, is refused again without a check (and without spending its budget).
    refused: Refused,
    /// Per client address (IPv6: per /64), the tokens not remembered above that may be
    /// checked: a signature check costs several times a proxied request, and without a
    /// budget one client sending tokens that never verify (each is checked anew) would
    /// spend the node's CPU without any route's rate limit seeing it (those count
    /// requests that passed access).
    new_tokens: crate::ratelimit::RateLimiter,
    /// Client addresses (IPv6: per /64) that sent a forged token in the last
    /// [`SUSPECT_FOR`]: their next checks wait behind everyone else's.
    suspects: Marked,
    /// Client addresses whose token verified in the last [`VOUCHED_FOR`]: their next
    /// checks (a returning citizen's new token) go before everyone else's.
    vouched: Marked,
    /// What it was built from: a reload that leaves both as they were keeps this verifier,
    /// with the tokens it remembers and the clients' budgets.
    source: (Jwt, String),
}

/// Signature checks done by every verifier of the process (`edgegate_jwt_signature_checks_total`):
/// what an operator sizes `new_tokens_per_client` by.
static SIGNATURE_CHECKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Tokens whose signature was checked (those not remembered, within their client's budget).
pub fn signature_checks() -> u64 {
    SIGNATURE_CHECKS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Checks put behind every other client's by [`Verifier::lane`]
/// (`edgegate_jwt_checks_put_last_total`).
static CHECKS_PUT_LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Checks put before every other client's by [`Verifier::lane`]
/// (`edgegate_jwt_checks_put_first_total`).
static CHECKS_PUT_FIRST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Checks put behind every other client's since the process started.
pub fn checks_put_last() -> u64 {
    CHECKS_PUT_LAST.load(std::sync::atomic::Ordering::Relaxed)
}

/// Checks put before every other client's since the process started.
pub fn checks_put_first() -> u64 {
    CHECKS_PUT_FIRST.load(std::sync::atomic::Ordering::Relaxed)
}

/// Where a token's signature check waits for its worker's turn ([`Verifier::lane`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckLane {
    /// Before every other check and new TLS handshake: a returning client.
    First,
    Usual,
    /// Behind every other check and TLS handshake: a client seen forging.
    Last,
}

/// How long a verified token is remembered before its signature is checked again.
pub const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// Verified tokens remembered at most (about 1 KiB each): the slots of [`Verified`].
pub const VERIFIED_CAPACITY: usize = 32_768;
/// Refused tokens remembered at most (see [`Refused`]).
pub const REFUSED_SLOTS: usize = 16_384;

/// Tokens already verified, keyed by the whole token, each with its user and `exp`:
/// [`VERIFIED_CAPACITY`] slots, a token's two neighbouring slots chosen by its keyed hash
/// (ahash, per-process random keys; a token is a few hundred bytes: std's SipHash cost ~850
/// instructions a lookup). A lookup hashes the token, locks one slot at a time (two
/// workers seldom meet there) and compares the whole token; a new token takes an empty or
/// outdated slot of its two, else the one remembered longest. Entries are checked against
/// `exp` on every hit and live at most [`VERIFIED_TTL`], by the clock the `exp` check
/// reads (one set back past an entry's start forgets it). Only tokens that verified are
/// ever inserted, so a flood of forged tokens cannot push a citizen's out; a citizen's
/// token pushed out by another's costs one signature check. (A concurrent cache with a
/// frequency sketch, a read log and expiry by its own clock cost ~500 instructions more a
/// citizen's request, and cleaned up inside requests.)
struct Verified {
    slots: Box<[std::sync::Mutex<Option<Arc<VerifiedToken>>>]>,
    hasher: ahash::RandomState,
}

struct VerifiedToken {
    token: Box<[u8]>,
    user: Arc<User>,
    exp: u64,
    /// Remembered from this second (since the epoch).
    since: u64,
}

impl VerifiedToken {
    /// The seconds it is still remembered for at second `now`: none once [`VERIFIED_TTL`]
    /// has passed, or when the clock reads earlier than when it was remembered.
    fn ttl_left(&self, now: u64) -> u64 {
        match now.checked_sub(self.since) {
            Some(age) => VERIFIED_TTL.as_secs().saturating_sub(age),
            None => 0,
        }
    }
}

/// What the lookup of a token found.
#[derive(Debug, PartialEq)]
enum Remembered {
    /// Verified, unexpired (with the leeway).
    User(Arc<User>),
    /// Verified, but `exp` has passed (with the leeway): forgotten now.
    Expired,
    /// Not remembered, or remembered past [`VERIFIED_TTL`] (forgotten now).
    No,
}

impl Verified {
    fn new(slots: usize) -> Verified {
        Verified {
            // An even number: a token's two slots are an aligned pair, locked in order.
            slots: (0..(slots.max(2) + 1) & !1).map(|_| std::sync::Mutex::new(None)).collect(),
            hasher: ahash::RandomState::new(),
        }
    }

    /// The token's two slots.
    fn pair(&self, token: &[u8]) -> [&std::sync::Mutex<Option<Arc<VerifiedToken>>>; 2] {
        let first = (self.hasher.hash_one(token) as usize % self.slots.len()) & !1;
        [&self.slots[first], &self.slots[first + 1]]
    }

    fn lock(
        slot: &std::sync::Mutex<Option<Arc<VerifiedToken>>>,
    ) -> std::sync::MutexGuard<'_, Option<Arc<VerifiedToken>>> {
        // Nothing panics while a slot is held (a compare, a swap).
        slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token at second `now`, with `leeway` seconds past its `exp`.
    fn get(&self, token: &[u8], now: u64, leeway: u64) -> Remembered {
        for slot in self.pair(token) {
            let mut held = Self::lock(slot);
            let Some(entry) = held.as_ref().filter(|e| *e.token == *token) else { continue };
            if entry.ttl_left(now) == 0 {
                *held = None;
                return Remembered::No;
            }
            if now > entry.exp.saturating_add(leeway) {
                *held = None;
                return Remembered::Expired;
            }
            return Remembered::User(Arc::clone(&entry.user));
        }
        Remembered::No
    }

    /// Remembers a verified token at second `now`.
    fn insert(&self, token: &[u8], user: &Arc<User>, exp: u64, now: u64) {
        let entry = Arc::new(VerifiedToken { token: token.into(), user: Arc::clone(user), exp, since: now });
        let [a, b] = self.pair(token);
        let (mut a, mut b) = (Self::lock(a), Self::lock(b));
        // Its own slot if it is there (verified again meanwhile), else an empty or outdated
        // one, else the one remembered longest.
        let own = |e: &Option<Arc<VerifiedToken>>| e.as_ref().is_some_and(|e| *e.token == *token);
        let ttl_left = |e: &Option<Arc<VerifiedToken>>| e.as_ref().map_or(0, |e| e.ttl_left(now));
        let into_b = !own(&a) && (own(&b) || ttl_left(&b) < ttl_left(&a));
        *(if into_b { &mut *b } else { &mut *a }) = Some(entry);
    }
}

/// How long a client address (IPv6: its /64) that sent a forged token — one whose signature
/// every key it could name refused — has its next tokens' checks wait behind every other
/// check and TLS handshake step on its worker ([`Verifier::lane`]). An expired token
/// with a good signature is no forgery: a citizen's stale tab does not count.
pub const SUSPECT_FOR: std::time::Duration = std::time::Duration::from_secs(60);
/// Client addresses remembered as seen forging at most (and, apart, as vouched for): the slots of [`Marked`].
pub const SUSPECT_SLOTS: usize = 16_384;
/// How long a client address (IPv6: its /64) whose token verified has its next tokens'
/// checks go before every other check and new TLS handshake ([`Verifier::lane`]) — unless
/// it also sent a forgery in the last [`SUSPECT_FOR`] (a carrier-grade NAT shared with a
/// forger): a citizen's client fetches a new token within its session, from where it was.
pub const VOUCHED_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// A table of atomic slots, each chosen by a keyed hash (per-process random keys, so no one
/// can compute values that land in one slot), a newer value taking an older one's slot: a
/// lookup or an insert is a hash and one atomic access, no allocation. For [`Marked`] and
/// [`Refused`].
struct HashSlots {
    slots: Box<[std::sync::atomic::AtomicU64]>,
    hasher: ahash::RandomState,
}

impl HashSlots {
    fn new(n: usize) -> HashSlots {
        HashSlots {
            slots: (0..n).map(|_| std::sync::atomic::AtomicU64::new(0)).collect(),
            hasher: ahash::RandomState::new(),
        }
    }

    /// `value`'s hash, and the slot its high 32 bits choose.
    fn find<T: std::hash::Hash + ?Sized>(&self, value: &T) -> (u64, &std::sync::atomic::AtomicU64) {
        let hash = self.hasher.hash_one(value);
        (hash, &self.slots[(hash >> 32) as usize % self.slots.len()])
    }
}

/// Client addresses that did something lately (sent a forged token; or, in a table of its
/// own, sent a token that verified): [`SUSPECT_SLOTS`] slots, each holding 32 bits of an
/// address's hash (the rest chose the slot) and the second it last did it. An address
/// whose slot another took is forgotten (it is marked again next time); one mistaken for
/// another (a 2^-32 chance) only has its checks go in another lane of the line.
struct Marked(HashSlots);

impl Marked {
    fn new() -> Marked {
        Marked(HashSlots::new(SUSPECT_SLOTS))
    }

    /// The address's tag (never 0, which an empty slot holds) and its slot.
    fn key(&self, client: std::net::IpAddr) -> (u64, &std::sync::atomic::AtomicU64) {
        let (hash, slot) = self.0.find(&crate::addr::client_of(client));
        (u64::from(hash as u32) | 1, slot)
    }

    fn mark(&self, client: std::net::IpAddr, now: u64) {
        let (tag, slot) = self.key(client);
        slot.store(tag << 32 | (now & u64::from(u32::MAX)), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `client` was marked less than `within` before `now`.
    fn get(&self, client: std::net::IpAddr, now: u64, within: std::time::Duration) -> bool {
        let (tag, slot) = self.key(client);
        let held = slot.load(std::sync::atomic::Ordering::Relaxed);
        held >> 32 == tag && (now as u32).wrapping_sub(held as u32) < within.as_secs() as u32
    }
}

/// Tokens refused for good — a bad signature under every key they could name, or expired:
/// neither ever comes good under the same keys, and a changed JWKS builds a new verifier,
/// which starts empty. Claims that may still come good (`nbf` ahead) are not remembered.
/// [`REFUSED_SLOTS`] slots of keyed hashes of whole tokens ([`HashSlots`]; a map of the
/// tokens themselves cost 7–10 % of the checks a worker makes under a flood of different
/// forged tokens). A hash shared by another token could only ever refuse that token, never
/// admit one.
struct Refused(HashSlots);

impl Refused {
    fn new() -> Refused {
        Refused(HashSlots::new(REFUSED_SLOTS))
    }

    /// The token's hash with bit 1 set (an empty slot is 0) and bit 0 free for the reason,
    /// and its slot.
    fn key(&self, token: &[u8]) -> (u64, &std::sync::atomic::AtomicU64) {
        let (hash, slot) = self.0.find(token);
        ((hash | 2) & !1, slot)
    }

    fn get(&self, token: &[u8]) -> Option<&'static str> {
        let (hash, slot) = self.key(token);
        let held = slot.load(std::sync::atomic::Ordering::Relaxed);
        (held & !1 == hash).then_some(if held & 1 == 1 { "token expired" } else { "bad signature" })
    }

    fn insert(&self, token: &[u8], reason: &'static str) {
        let (hash, slot) = self.key(token);
        slot.store(hash | u64::from(reason == "token expired"), std::sync::atomic::Ordering::Relaxed);
    }
}

impl Verifier {
    /// Builds a verifier from the JWKS document's text. Keys of other algorithms or
    /// types are an error: a key the operator expects to work must not be ignored.
    pub fn new(config: &Jwt, jwks: &str) -> Result<Verifier, String> {
        crate::token_crypto::install();
        let set: JwkSet = serde_json::from_str(jwks).map_err(|e| format!("not a JWKS document: {e}"))?;
        if set.keys.is_empty() {
            return Err("the JWKS document has no keys".into());
        }
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let algorithm =
                algorithm_of(jwk).ok_or_else(|| format!("keys[{i}]: unsupported key (use RS256, ES256 or EdDSA)"))?;
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("keys[{i}]: {e}"))?;
            check_key(algorithm, &key).map_err(|e| format!("keys[{i}]: {e}"))?;
            keys.push(Key { kid: jwk.common.key_id.clone(), algorithm, key });
        }
        let validations = ALGORITHMS
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.set_issuer(&[&config.issuer]);
                v.set_audience(&[&config.audience]);
                v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                v.leeway = config.leeway.as_secs();
                v.validate_nbf = true;
                (alg, v)
            })
            .collect();
        Ok(Verifier {
            keys,
            validations,
            role_claim: config.role_claim.clone(),
            leeway_secs: config.leeway.as_secs(),
            verified: Verified::new(VERIFIED_CAPACITY),
            refused: Refused::new(),
            new_tokens: crate::ratelimit::RateLimiter::per_client(config.new_tokens_per_client),
            suspects: Marked::new(),
            vouched: Marked::new(),
            source: (config.clone(), jwks.to_owned()),
        })
    }

    /// Whether `other` was built from the same config and JWKS text as this one.
    pub fn same_source(&self, other: &Verifier) -> bool {
        self.source == other.source
    }

    /// Where the check of a token from `client` (one [`Verifier::verify_at`] answered
    /// [`Identity::AwaitsTurn`]) waits for its turn. Last, behind every other client's,
    /// when `client` (IPv6: its /64) sent a forged token — a bad signature under every key
    /// it could name — in the last [`SUSPECT_FOR`]: a flood of forgeries from addresses
    /// already seen forging then delays no citizen. First, before every other client's,
    /// when a token from it verified in the last [`VOUCHED_FOR`] and it sent no forgery
    /// lately: a returning citizen's new token goes ahead of a flood from addresses never
    /// seen. An address that did both (shared with a forger) and a request without an
    /// address wait as usual. Each check put first or last is counted
    /// ([`checks_put_first`], [`checks_put_last`]).
    pub fn lane(&self, client: Option<std::net::IpAddr>) -> CheckLane {
        let Some(client) = client else { return CheckLane::Usual };
        let now = now_secs();
        let (lane, counted) =
            match (self.vouched.get(client, now, VOUCHED_FOR), self.suspects.get(client, now, SUSPECT_FOR)) {
                (true, false) => (CheckLane::First, Some(&CHECKS_PUT_FIRST)),
                (false, true) => (CheckLane::Last, Some(&CHECKS_PUT_LAST)),
                _ => (CheckLane::Usual, None),
            };
        if let Some(count) = counted {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        lane
    }

    /// Checks the `Authorization` header value, if any, sent by `client`.
    pub fn verify(&self, authorization: Option<&[u8]>, client: Option<std::net::IpAddr>) -> Identity {
        self.verify_at(authorization, client, TokenCheck::Now)
    }

    /// As [`Verifier::verify`], with the signature check, if one is needed, made when
    /// `check` says.
    pub fn verify_at(
        &self,
        authorization: Option<&[u8]>,
        client: Option<std::net::IpAddr>,
        check: TokenCheck,
    ) -> Identity {
        let Some(value) = authorization else { return Identity::Anonymous };
        let Some(token) = bearer(value) else { return Identity::Invalid("not a Bearer token") };
        match self.verified.get(token, now_secs(), self.leeway_secs) {
            Remembered::User(user) => return Identity::User(user),
            Remembered::Expired => return Identity::Invalid("token expired"),
            Remembered::No => {}
        }
        if let Some(reason) = self.refused.get(token) {
            return Identity::Invalid(reason);
        }
        if check != TokenCheck::Charged {
            if let crate::ratelimit::LimitOutcome::Limited { retry_after } = self.new_tokens.check_client(client) {
                return Identity::Throttled(retry_after);
            }
        }
        let Ok(token) = std::str::from_utf8(token) else { return Identity::Invalid("malformed token") };
        let Ok(header) = jsonwebtoken::decode_header(token) else { return Identity::Invalid("malformed token") };
        if !ALGORITHMS.contains(&header.alg) {
            return Identity::Invalid("algorithm not accepted");
        }
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Identity::Invalid("algorithm not accepted");
        };
        let candidates = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg && (header.kid.is_none() || k.kid.is_none() || k.kid == header.kid));
        if check == TokenCheck::Later && candidates.clone().next().is_some() {
            return Identity::AwaitsTurn;
        }
        let mut reason = "no key for this token";
        // Every key tried refused it for good (remembered below).
        let mut for_good = false;
        // Every key tried found its signature bad: a forgery (its client marked below).
        let mut forged = true;
        for (i, k) in candidates.enumerate() {
            // A token that names no key (or a JWKS whose keys name none) is tried against
            // every key of its algorithm: each check after the first is one more from the
            // client's budget, so a forged token cannot cost a check per key for one.
            if i > 0 {
                if let crate::ratelimit::LimitOutcome::Limited { retry_after } = self.new_tokens.check_client(client) {
                    return Identity::Throttled(retry_after);
                }
            }
            SIGNATURE_CHECKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &k.key, validation) {
                Ok(data) => {
                    let exp = data.claims.get("exp").and_then(serde_json::Value::as_u64).unwrap_or(0);
                    let identity = self.user(data.claims);
                    if let Identity::User(u) = &identity {
                        let now = now_secs();
                        self.verified.insert(token.as_bytes(), u, exp, now);
                        if let Some(client) = client {
                            self.vouched.mark(client, now);
                        }
                    }
                    return identity;
                }
                Err(e) => {
                    reason = describe(&e);
                    for_good = (i == 0 || for_good) && matches!(reason, "bad signature" | "token expired");
                    forged &= reason == "bad signature";
                }
            }
        }
        if for_good {
            self.refused.insert(token.as_bytes(), reason);
        }
        if let (true, "bad signature", Some(client)) = (forged, reason, client) {
            self.suspects.mark(client, now_secs());
        }
        Identity::Invalid(reason)
    }

    fn user(&self, claims: serde_json::Map<String, serde_json::Value>) -> Identity {
        let Some(id) = claims.get("sub").and_then(|v| v.as_str()).map(str::to_owned) else {
            return Identity::Invalid("no sub claim");
        };
        let role = claims.get(&self.role_claim).and_then(|v| v.as_str()).map(str::to_owned);
        Identity::User(Arc::new(User::new(id, role, &claims)))
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The token of a `Bearer` credential (the scheme in any case), as bytes: a remembered
/// token is looked up without reading it as text first.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let text = value.trim_ascii();
    let space = memchr::memchr(b' ', text)?;
    let token = text[space + 1..].trim_ascii();
    (text[..space].eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

/// A key whose size no token of its algorithm can be checked against is refused when the
/// JWKS is read, not found out token by token: an RSA modulus of 2048 to 8192 bits (the
/// checks refuse smaller ones, which are no longer safe), a P-256 point of 65 bytes, an
/// Ed25519 key of 32.
fn check_key(algorithm: Algorithm, key: &DecodingKey) -> Result<(), String> {
    use jsonwebtoken::DecodingKeyKind;
    match (algorithm, key.kind()) {
        (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, .. }) => {
            let n = &n[n.iter().take_while(|&&b| b == 0).count()..];
            let bits = (n.len() * 8).saturating_sub(n.first().map_or(8, |b| b.leading_zeros() as usize));
            if !(2048..=8192).contains(&bits) {
                return Err(format!("an RSA key of {bits} bits (RS256 keys must have 2048 to 8192)"));
            }
        }
        (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) if point.len() != 65 => {
            return Err("x and y must be 32 bytes each for P-256".into());
        }
        (Algorithm::EdDSA, DecodingKeyKind::SecretOrDer(k)) if k.len() != 32 => {
            return Err("x must be 32 bytes for Ed25519".into());
        }
        _ => {}
    }
    Ok(())
}

fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Some(Algorithm::ES256),
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Some(Algorithm::EdDSA),
        _ => None,
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind::*;
    match e.kind() {
        ExpiredSignature => "token expired",
        ImmatureSignature => "token not yet valid",
        InvalidIssuer => "wrong issuer",
        InvalidAudience => "wrong audience",
        InvalidSignature => "bad signature",
        MissingRequiredClaim(_) => "missing required claim",
        _ => "invalid token",
    }
}

/// A signed JWT for testing policies against one's own JWKS (`edgegate token`): the key is
/// a PEM private key (EC P-256 → ES256, Ed25519 → EdDSA, RSA → RS256); `claims` are taken
/// as given, with `iat` and `exp` (now + `ttl`) added unless present. A test aid: real
/// citizens' tokens come from the identity provider.
pub fn mint_test_token(
    pem: &[u8],
    claims: serde_json::Value,
    kid: Option<String>,
    ttl: std::time::Duration,
) -> Result<String, String> {
    use jsonwebtoken::{Algorithm, EncodingKey};
    crate::token_crypto::install();
    let (alg, key) = if let Ok(k) = EncodingKey::from_ec_pem(pem) {
        (Algorithm::ES256, k)
    } else if let Ok(k) = EncodingKey::from_ed_pem(pem) {
        (Algorithm::EdDSA, k)
    } else if let Ok(k) = EncodingKey::from_rsa_pem(pem) {
        (Algorithm::RS256, k)
    } else {
        return Err("not a PEM private key for ES256 (P-256), EdDSA (Ed25519) or RS256 (RSA)".into());
    };
    let serde_json::Value::Object(mut claims) = claims else {
        return Err("the claims must be a JSON object".into());
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    claims.entry("iat").or_insert(now.into());
    claims.entry("exp").or_insert((now + ttl.as_secs()).into());
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid;
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| format!("signing: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{b64url, forge, Issuer, AUDIENCE, ISSUER};
    use jsonwebtoken::{EncodingKey, Header};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn config() -> Jwt {
        Jwt {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            keys: "jwks.json".into(),
            role_claim: "role".into(),
            leeway: Duration::from_secs(5),
            new_tokens_per_client: edgegate_config::DEFAULT_NEW_TOKENS_PER_CLIENT,
        }
    }

    /// A verifier of `jwks` whose clients may have `burst` new tokens checked at once, and
    /// one more a second.
    fn with_budget(jwks: &str, burst: u32) -> Verifier {
        let mut cfg = config();
        cfg.new_tokens_per_client = edgegate_config::ClientRate { rate: 1, burst };
        Verifier::new(&cfg, jwks).expect("verifier")
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    /// A client address, as the verifier is given one.
    fn ip(s: &str) -> Option<std::net::IpAddr> {
        Some(s.parse().expect("ip"))
    }

    /// An issuer, a verifier of its tokens, a good token, and a forgery of it (its
    /// signature borrowed by other claims) as an `Authorization` value.
    fn beside_a_forgery() -> (Issuer, Verifier, String, String) {
        let issuer = Issuer::new();
        let v = Verifier::new(&config(), &issuer.jwks).expect("verifier");
        let good = issuer.token(Algorithm::ES256, serde_json::json!({}));
        let forged = format!("Bearer {}", forge(&issuer.token(Algorithm::ES256, serde_json::json!({"n": 1})), &good));
        (issuer, v, good, forged)
    }

    /// `client`, marked in `table` a moment ago, is kept for `within` and forgotten after it.
    fn kept_for(table: &Marked, client: Option<std::net::IpAddr>, within: std::time::Duration) {
        let (client, marked) = (client.expect("an address"), now());
        assert!(table.get(client, marked + within.as_secs() - 1, within), "kept for {within:?}");
        assert!(!table.get(client, marked + within.as_secs() + 1, within), "forgotten after {within:?}");
    }

    fn claims(exp_offset: i64) -> serde_json::Value {
        serde_json::json!({
            "sub": "citizen-42", "role": "citizen", "iss": ISSUER, "aud": AUDIENCE,
            "exp": (now() as i64 + exp_offset),
        })
    }

    #[test]
    fn valid_tokens_of_each_algorithm_become_users() {
        let issuer = Issuer::new();
        let v = Verifier::new(&config(), &issuer.jwks).expect("verifier");
        for alg in [Algorithm::ES256, Algorithm::EdDSA] {
            let t = issuer.token(alg, serde_json::json!({}));
            match v.verify(Some(format!("Bearer {t}").as_bytes()), None) {
                Identity::User(u) => {
                    assert_eq!(u.id(), "citizen-42");
                    assert_eq!(u.role(), Some("citizen"));
                }
                other => panic!("{alg:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let issuer = Issuer::new();
        let v = Verifier::new(&config(), &issuer.jwks).expect("verifier");
        let alg = Algorithm::ES256;
        let good = issuer.token(alg, serde_json::json!({}));
        let tampered = {
            // The payload of another valid token, under this token's signature.
            let admin = issuer.token(alg, serde_json::json!({"role": "admin"}));
            let mut parts: Vec<&str> = good.split('.').collect();
            parts[1] = admin.split('.').nth(1).expect("payload");
            parts.join(".")
        };
        let expired = serde_json::json!({"exp": now() - 3600});
        for (t, reason) in [
            (issuer.token(alg, expired), "token expired"),
            (issuer.token(alg, serde_json::json!({"iss": "https://evil.example"})), "wrong issuer"),
            (issuer.token(alg, serde_json::json!({"aud": "other"})), "wrong audience"),
            (tampered, "bad signature"),
            ("not.a.jwt".to_owned(), "malformed token"),
        ] {
            assert_eq!(v.verify(Some(format!("Bearer {t}").as_bytes()), None), Identity::Invalid(reason));
        }
        assert_eq!(v.verify(Some(b"Basic dXNlcjpwYXNz"), None), Identity::Invalid("not a Bearer token"));
        assert_eq!(v.verify(Some(b"Bearer"), None), Identity::Invalid("not a Bearer token"));
        assert_eq!(v.verify(Some(b"Bearer  \t "), None), Identity::Invalid("not a Bearer token"));
        assert_eq!(v.verify(Some(b"Bearer \xff\xfe.\x00.\x80"), None), Identity::Invalid("malformed token"));
        assert_eq!(v.verify(None, None), Identity::Anonymous);
        // The scheme in any case, spaces around the token: the same citizen.
        let spaced = format!("  bEaReR   {good} \t");
        assert!(matches!(v.verify(Some(spaced.as_bytes()), None), Identity::User(u) if u.id() == "citizen-42"));
    }

    #[test]
    fn an_address_that_sent_a_forged_token_is_a_suspect_for_a_minute() {
        let (issuer, v, good, forged) = beside_a_forgery();
        let expired = format!("Bearer {}", issuer.token(Algorithm::ES256, serde_json::json!({"exp": now() - 600})));
        // Signed by another key under the name of the JWKS's: a forgery too.
        let other_signer = format!("Bearer {}", Issuer::new().token(Algorithm::ES256, serde_json::json!({})));
        let no_key =
            format!("Bearer {}.{}", b64url(br#"{"alg":"ES256","kid":"nope"}"#), good.split_once('.').expect("parts").1);
        let (forger, forger2, stale, stranger, other) =
            (ip("2001:db8:5:7::1"), ip("203.0.113.9"), ip("198.51.100.31"), ip("198.51.100.32"), ip("198.51.100.33"));
        assert_eq!(v.verify(Some(forged.as_bytes()), forger), Identity::Invalid("bad signature"));
        assert_eq!(v.verify(Some(other_signer.as_bytes()), forger2), Identity::Invalid("bad signature"));
        // A citizen's stale token has a good signature; one naming no key of the JWKS, or a
        // malformed one, costs no check: none of them marks its sender.
        assert_eq!(v.verify(Some(expired.as_bytes()), stale), Identity::Invalid("token expired"));
        assert_eq!(v.verify(Some(no_key.as_bytes()), stranger), Identity::Invalid("no key for this token"));
        assert_eq!(v.verify(Some(b"Bearer not.a.token"), stranger), Identity::Invalid("malformed token"));
        assert!(v.lane(forger) == CheckLane::Last && v.lane(forger2) == CheckLane::Last);
        assert_eq!(v.lane(ip("2001:db8:5:7:ffff::9")), CheckLane::Last, "the same /64");
        assert_eq!(v.lane(ip("2001:db8:5:8::1")), CheckLane::Usual, "another /64");
        for (client, name) in [(stale, "the stale token's"), (stranger, "the stranger's"), (other, "another's")] {
            assert_eq!(v.lane(client), CheckLane::Usual, "{name} address");
        }
        assert_eq!(v.lane(None), CheckLane::Usual);
        // The forgery remembered as refused marks nobody again, but the mark stays its minute.
        assert_eq!(v.verify(Some(forged.as_bytes()), other), Identity::Invalid("bad signature"));
        assert_eq!(v.lane(other), CheckLane::Usual);
        kept_for(&v.suspects, forger, SUSPECT_FOR);
    }

    #[test]
    fn an_address_whose_token_verified_goes_first_for_an_hour_unless_it_forged() {
        let (issuer, v, good, forged) = beside_a_forgery();
        let (returning, shared, stranger) = (ip("2001:db8:9:1::5"), ip("198.51.100.41"), ip("198.51.100.42"));
        let before = checks_put_first();
        assert!(matches!(v.verify(Some(format!("Bearer {good}").as_bytes()), returning), Identity::User(_)));
        assert_eq!(v.lane(returning), CheckLane::First);
        assert_eq!(v.lane(ip("2001:db8:9:1:abcd::1")), CheckLane::First, "the same /64");
        assert!(checks_put_first() >= before + 2, "counted");
        // A remembered token vouches for no other address: it was not checked there.
        assert!(matches!(v.verify(Some(format!("Bearer {good}").as_bytes()), stranger), Identity::User(_)));
        assert_eq!(v.lane(stranger), CheckLane::Usual);
        // An address that verified and forged (shared with a forger) waits as usual.
        let other = issuer.token(Algorithm::ES256, serde_json::json!({"sub": "citizen-8"}));
        assert!(matches!(v.verify(Some(format!("Bearer {other}").as_bytes()), shared), Identity::User(_)));
        assert_eq!(v.verify(Some(forged.as_bytes()), shared), Identity::Invalid("bad signature"));
        assert_eq!(v.lane(shared), CheckLane::Usual);
        kept_for(&v.vouched, returning, VOUCHED_FOR);
    }

    #[test]
    fn a_token_refused_for_good_is_refused_again_without_a_check() {
        let issuer = Issuer::new();
        let v = with_budget(&issuer.jwks, 3);
        let client = ip("198.51.100.30");
        let good = issuer.token(Algorithm::ES256, serde_json::json!({}));
        let forged = format!("Bearer {}", forge(&issuer.token(Algorithm::ES256, serde_json::json!({"n": 1})), &good));
        // Two tokens in one slot would leave only the newer remembered: take an expired one
        // whose slot is not the forged one's.
        let slot = |t: &str| std::ptr::from_ref(v.refused.key(&t.as_bytes()[7..]).1);
        let expired = (0..)
            .map(|i| {
                format!("Bearer {}", issuer.token(Algorithm::ES256, serde_json::json!({"exp": now() - 600, "n": i})))
            })
            .find(|e| slot(e) != slot(&forged))
            .expect("a token in another slot");
        let early = format!("Bearer {}", issuer.token(Algorithm::ES256, serde_json::json!({"nbf": now() + 600})));
        assert_eq!(v.verify(Some(forged.as_bytes()), client), Identity::Invalid("bad signature"));
        assert_eq!(v.verify(Some(expired.as_bytes()), client), Identity::Invalid("token expired"));
        assert_eq!(v.verify(Some(early.as_bytes()), client), Identity::Invalid("token not yet valid"));
        // The budget of three is spent, so a token that were checked again would be held
        // back: the forged and the expired one are answered from memory, again and again —
        // also when asked for later (no turn to wait for).
        for _ in 0..5 {
            assert_eq!(v.verify(Some(forged.as_bytes()), client), Identity::Invalid("bad signature"));
            assert_eq!(v.verify(Some(expired.as_bytes()), client), Identity::Invalid("token expired"));
            let later = v.verify_at(Some(forged.as_bytes()), client, TokenCheck::Later);
            assert_eq!(later, Identity::Invalid("bad signature"));
        }
        // One whose `nbf` is ahead may come good: it is checked again (here held back, the
        // budget being spent).
        assert!(matches!(v.verify(Some(early.as_bytes()), client), Identity::Throttled(_)));
        // A new verifier (a changed JWKS) remembers nothing: it checks the token anew.
        let fresh = with_budget(&issuer.jwks, 3);
        let before = signature_checks();
        assert_eq!(fresh.verify(Some(forged.as_bytes()), client), Identity::Invalid("bad signature"));
        assert!(signature_checks() > before);
    }

    #[test]
    fn keys_no_token_could_be_checked_against_are_refused_when_the_jwks_is_read() {
        use rsa::traits::PublicKeyParts;
        let small = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).expect("rsa keygen");
        let jwks = |key: serde_json::Value| serde_json::json!({ "keys": [key] }).to_string();
        let rsa = jwks(
            serde_json::json!({"kty": "RSA", "n": b64url(&small.n().to_bytes_be()), "e": b64url(&small.e().to_bytes_be())}),
        );
        let err = Verifier::new(&config(), &rsa).err().expect("a 1024-bit key is refused");
        assert_eq!(err, "keys[0]: an RSA key of 1024 bits (RS256 keys must have 2048 to 8192)");
        let short =
            jwks(serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64url(&[1; 31]), "y": b64url(&[2; 32])}));
        let err = Verifier::new(&config(), &short).err().expect("a short point is refused");
        assert_eq!(err, "keys[0]: x and y must be 32 bytes each for P-256");
        let ed = jwks(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(&[3; 31])}));
        let err = Verifier::new(&config(), &ed).err().expect("a short Ed25519 key is refused");
        assert_eq!(err, "keys[0]: x must be 32 bytes for Ed25519");
    }

    #[test]
    fn rs256_tokens_verify_against_rsa_jwks() {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("rsa keygen");
        let pem = private.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).expect("pem");
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("encoding key");
        let jwks = serde_json::json!({"keys": [{
            "kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig",
            "n": b64url(&private.n().to_bytes_be()), "e": b64url(&private.e().to_bytes_be()),
        }]});
        let v = Verifier::new(&config(), &jwks.to_string()).expect("verifier");
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        let t = jsonwebtoken::encode(&header, &claims(300), &key).expect("sign");
        assert!(
            matches!(v.verify(Some(format!("Bearer {t}").as_bytes()), None), Identity::User(u) if u.id() == "citizen-42")
        );
        let expired = jsonwebtoken::encode(&header, &claims(-600), &key).expect("sign");
        assert_eq!(v.verify(Some(format!("Bearer {expired}").as_bytes()), None), Identity::Invalid("token expired"));
    }

    fn citizen(id: &str) -> Arc<User> {
        Arc::new(User::new(id.into(), None, &serde_json::Map::new()))
    }

    fn remembered_id(r: Remembered) -> Option<String> {
        match r {
            Remembered::User(u) => Some(u.id().to_owned()),
            _ => None,
        }
    }

    #[test]
    fn a_verified_token_is_remembered_for_its_ttl_until_its_exp_and_answers_for_itself_only() {
        let v = Verified::new(VERIFIED_CAPACITY);
        let ttl = VERIFIED_TTL.as_secs();
        v.insert(b"token-a", &citizen("a"), 5_000, 1_000);
        assert_eq!(remembered_id(v.get(b"token-a", 1_000, 0)).as_deref(), Some("a"));
        assert_eq!(remembered_id(v.get(b"token-a", 1_000 + ttl - 1, 0)).as_deref(), Some("a"));
        // A token differing by a byte, or a prefix of it, is another token.
        assert_eq!(v.get(b"token-b", 1_000, 0), Remembered::No);
        assert_eq!(v.get(b"token-", 1_000, 0), Remembered::No);
        // Past the TTL it is forgotten (its signature is checked again), and stays so.
        assert_eq!(v.get(b"token-a", 1_000 + ttl, 0), Remembered::No);
        assert_eq!(v.get(b"token-a", 1_000, 0), Remembered::No);
        // A clock set back past when it was remembered forgets it too.
        v.insert(b"token-a", &citizen("a"), 5_000, 1_000);
        assert_eq!(v.get(b"token-a", 999, 0), Remembered::No);
        assert_eq!(v.get(b"token-a", 1_000, 0), Remembered::No);
        // Past its exp (with the leeway) it is expired once, then forgotten.
        v.insert(b"token-c", &citizen("c"), 1_010, 1_000);
        assert_eq!(remembered_id(v.get(b"token-c", 1_014, 5)).as_deref(), Some("c"), "within the leeway");
        assert_eq!(v.get(b"token-c", 1_016, 5), Remembered::Expired);
        assert_eq!(v.get(b"token-c", 1_000, 5), Remembered::No);
    }

    #[test]
    fn a_full_pair_of_slots_forgets_the_token_remembered_longest_and_keeps_one_copy_of_each() {
        // One pair of slots: every token shares it.
        let v = Verified::new(2);
        v.insert(b"a", &citizen("a"), u64::MAX, 0);
        v.insert(b"b", &citizen("b"), u64::MAX, 10);
        assert_eq!(remembered_id(v.get(b"a", 20, 0)).as_deref(), Some("a"));
        assert_eq!(remembered_id(v.get(b"b", 20, 0)).as_deref(), Some("b"));
        v.insert(b"c", &citizen("c"), u64::MAX, 20);
        assert_eq!(v.get(b"a", 20, 0), Remembered::No, "the oldest made room");
        assert_eq!(remembered_id(v.get(b"b", 20, 0)).as_deref(), Some("b"));
        assert_eq!(remembered_id(v.get(b"c", 20, 0)).as_deref(), Some("c"));
        // Verified again, a token takes its own slot back: the other stays.
        v.insert(b"b", &citizen("b2"), u64::MAX, 30);
        assert_eq!(remembered_id(v.get(b"b", 30, 0)).as_deref(), Some("b2"));
        assert_eq!(remembered_id(v.get(b"c", 30, 0)).as_deref(), Some("c"));
        // An outdated slot is taken before a live one.
        v.insert(b"d", &citizen("d"), u64::MAX, 20 + VERIFIED_TTL.as_secs());
        assert_eq!(v.get(b"c", 20 + VERIFIED_TTL.as_secs(), 0), Remembered::No);
        assert_eq!(remembered_id(v.get(b"b", 20 + VERIFIED_TTL.as_secs(), 0)).as_deref(), Some("b2"));
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let issuer = Issuer::new();
        let mut cfg = config();
        cfg.leeway = Duration::ZERO;
        let v = Verifier::new(&cfg, &issuer.jwks).expect("verifier");
        let t = issuer.token(Algorithm::EdDSA, serde_json::json!({"exp": now() + 1}));
        let header = format!("Bearer {t}");
        let (Identity::User(first), Identity::User(second)) =
            (v.verify(Some(header.as_bytes()), None), v.verify(Some(header.as_bytes()), None))
        else {
            panic!("the token verifies, and then is remembered");
        };
        // The second request shares the citizen (and its policy input) the first built.
        assert!(Arc::ptr_eq(&first, &second), "second is remembered");
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(
            v.verify(Some(header.as_bytes()), None),
            Identity::Invalid("token expired"),
            "exp is checked on hits"
        );
        // A tampered copy of a remembered token is a different key: verified from scratch.
        let mut bad = t.clone();
        bad.pop();
        assert!(matches!(v.verify(Some(format!("Bearer {bad}").as_bytes()), None), Identity::Invalid(_)));
    }

    #[test]
    fn a_client_has_a_budget_of_new_tokens_and_remembered_ones_are_free() {
        let issuer = Issuer::new();
        let v = with_budget(&issuer.jwks, 3);
        let good = format!("Bearer {}", issuer.token(Algorithm::ES256, serde_json::json!({})));
        // An administrator's claims under the signature of another token.
        let forged = |i: usize| {
            let admin = issuer.token(Algorithm::ES256, serde_json::json!({"role": "admin", "n": i}));
            format!("Bearer {}", forge(&admin, &good))
        };
        let client = ip("2001:db8:5:5::1");
        assert!(matches!(v.verify(Some(good.as_bytes()), client), Identity::User(_)), "the first check");
        assert_eq!(v.verify(Some(forged(1).as_bytes()), client), Identity::Invalid("bad signature"));
        assert_eq!(v.verify(Some(forged(2).as_bytes()), client), Identity::Invalid("bad signature"));
        // The budget is spent: a new token, good or not, is not checked — from any address
        // of the /64.
        for (token, from) in [(forged(3), "2001:db8:5:5::1"), (forged(4), "2001:db8:5:5::abcd")] {
            match v.verify(Some(token.as_bytes()), ip(from)) {
                Identity::Throttled(retry) => assert!(retry > Duration::ZERO && retry <= Duration::from_secs(1)),
                other => panic!("{from}: {other:?}"),
            }
        }
        let fresh = format!("Bearer {}", issuer.token(Algorithm::EdDSA, serde_json::json!({"sub": "citizen-7"})));
        assert!(matches!(v.verify(Some(fresh.as_bytes()), client), Identity::Throttled(_)));
        // A remembered token costs no check, so it is never held back.
        assert!(matches!(v.verify(Some(good.as_bytes()), client), Identity::User(_)));
        // Another client has its own budget.
        assert!(matches!(v.verify(Some(fresh.as_bytes()), ip("2001:db8:5:6::1")), Identity::User(_)));
        assert_eq!(v.verify(Some(forged(5).as_bytes()), ip("198.51.100.1")), Identity::Invalid("bad signature"));
    }

    #[test]
    fn a_check_asked_for_later_is_charged_once_and_made_when_asked_again() {
        let issuer = Issuer::new();
        let v = with_budget(&issuer.jwks, 2);
        let client = ip("198.51.100.9");
        let good = format!("Bearer {}", issuer.token(Algorithm::ES256, serde_json::json!({})));
        let forged = format!("Bearer {}", forge(&issuer.token(Algorithm::ES256, serde_json::json!({"n": 1})), &good));
        let checks = signature_checks();
        // Not checked yet: each waits for its turn, its client's budget charged.
        assert_eq!(v.verify_at(Some(good.as_bytes()), client, TokenCheck::Later), Identity::AwaitsTurn);
        assert_eq!(v.verify_at(Some(forged.as_bytes()), client, TokenCheck::Later), Identity::AwaitsTurn);
        // Asked again with the turn held: checked, and not charged again (the budget of two
        // is spent by the two above, yet both are checked).
        assert!(matches!(v.verify_at(Some(good.as_bytes()), client, TokenCheck::Charged), Identity::User(_)));
        assert_eq!(
            v.verify_at(Some(forged.as_bytes()), client, TokenCheck::Charged),
            Identity::Invalid("bad signature")
        );
        assert!(signature_checks() >= checks + 2);
        // A remembered token is answered at once, and so is the refused one; a new one now
        // finds the budget spent, without waiting for a turn.
        assert!(matches!(v.verify_at(Some(good.as_bytes()), client, TokenCheck::Later), Identity::User(_)));
        let refused = v.verify_at(Some(forged.as_bytes()), client, TokenCheck::Later);
        assert_eq!(refused, Identity::Invalid("bad signature"));
        let another = format!("Bearer {}", forge(&issuer.token(Algorithm::ES256, serde_json::json!({"n": 2})), &good));
        assert!(matches!(v.verify_at(Some(another.as_bytes()), client, TokenCheck::Later), Identity::Throttled(_)));
        // One that cannot be checked (no such key, not a JWT) is refused at once.
        let other = ip("198.51.100.10");
        assert_eq!(
            v.verify_at(Some(b"Bearer not.a.jwt"), other, TokenCheck::Later),
            Identity::Invalid("malformed token")
        );
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "x"}),
            &jsonwebtoken::EncodingKey::from_secret(b"k"),
        )
        .expect("token");
        let answer = v.verify_at(Some(format!("Bearer {hs}").as_bytes()), other, TokenCheck::Later);
        assert_eq!(answer, Identity::Invalid("algorithm not accepted"));
    }

    #[test]
    fn each_key_a_token_is_tried_against_comes_out_of_the_budget() {
        // A JWKS in the middle of a rotation: three ES256 keys. A token naming no key is
        // tried against all three, so a forged one cost three signature checks for one
        // from the budget.
        let issuer = Issuer::new();
        let mut jwks: serde_json::Value = serde_json::from_str(&issuer.jwks).expect("jwks");
        for kid in ["old-1", "old-2"] {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
            let raw = pair.public_key_raw();
            let key = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64url(&raw[1..33]), "y": b64url(&raw[33..65])});
            jwks["keys"].as_array_mut().expect("keys").push(key);
        }
        let v = with_budget(&jwks.to_string(), 5);
        let pem = &issuer.pems.iter().find(|(a, _)| *a == Algorithm::ES256).expect("ES256").1;
        let unnamed = |claims: serde_json::Value| {
            let mut c = serde_json::json!({"sub": "citizen-42", "iss": ISSUER, "aud": AUDIENCE});
            c.as_object_mut().expect("object").extend(claims.as_object().expect("object").clone());
            mint_test_token(pem.as_bytes(), c, None, Duration::from_secs(300)).expect("token")
        };
        let signed = unnamed(serde_json::json!({}));
        let forged =
            |n: u32| format!("Bearer {}", forge(&unnamed(serde_json::json!({"role": "admin", "n": n})), &signed));
        let client = ip("198.51.100.7");
        let before = signature_checks();
        // Three checks, three from the budget of five.
        assert_eq!(v.verify(Some(forged(1).as_bytes()), client), Identity::Invalid("bad signature"));
        // Two checks left: the third key is not tried.
        assert!(matches!(v.verify(Some(forged(2).as_bytes()), client), Identity::Throttled(_)));
        // Other tests run checks at the same time: the count rose by at least these five.
        assert!(signature_checks() >= before + 5);
        // A token naming its key is tried against that key alone; this client's budget is
        // spent, another's is not.
        let named = format!("Bearer {}", issuer.token(Algorithm::ES256, serde_json::json!({})));
        assert!(matches!(v.verify(Some(named.as_bytes()), client), Identity::Throttled(_)));
        let other = ip("198.51.100.8");
        assert!(matches!(v.verify(Some(named.as_bytes()), other), Identity::User(_)));
        // A real token that names no key verifies against the key that signed it.
        let good = format!("Bearer {}", unnamed(serde_json::json!({})));
        assert!(matches!(v.verify(Some(good.as_bytes()), other), Identity::User(_)));
    }

    #[test]
    fn hs256_and_none_are_never_accepted() {
        let v = Verifier::new(&config(), &Issuer::new().jwks).expect("verifier");
        let hs =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims(300), &EncodingKey::from_secret(b"guess"))
                .expect("sign");
        assert_eq!(
            v.verify(Some(format!("Bearer {hs}").as_bytes()), None),
            Identity::Invalid("algorithm not accepted")
        );
        // Unsigned tokens, as an attacker writes them: `alg: none` in any case, with an
        // empty signature or none at all, with and without a key id the JWKS holds.
        let payload = b64url(serde_json::to_string(&claims(300)).expect("claims").as_bytes());
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"NONE"}"#,
            r#"{"alg":"none","kid":"ec-1"}"#,
        ] {
            for token in [
                format!("{}.{payload}.", b64url(header.as_bytes())),
                format!("{}.{payload}", b64url(header.as_bytes())),
            ] {
                let verdict = v.verify(Some(format!("Bearer {token}").as_bytes()), None);
                assert!(matches!(verdict, Identity::Invalid(_)), "{header} {token}: {verdict:?}");
            }
        }
    }

    #[test]
    fn broken_jwks_is_an_error() {
        assert!(Verifier::new(&config(), "{}").is_err());
        match Verifier::new(&config(), r#"{"keys":[]}"#) {
            Err(e) => assert!(e.contains("no keys"), "{e}"),
            Ok(_) => panic!("an empty JWKS must be refused"),
        }
    }
}
