//! Redis as the shared second level of the response cache (request path step 6 after an
//! L1 miss; step 9 writes both levels, the Redis write off the request path). Every
//! command has a short timeout; failures open a circuit breaker that skips Redis
//! entirely for a while, so a slow or dead Redis costs requests nothing but the L2 hit
//! rate. Purges are published on a channel so every gateway sharing the Redis drops the
//! entries from its own L1 too.
//!
//! With the fleet's key (`cache.redis.key_file`), every entry a gateway writes is encrypted
//! and authenticated under it (AES-256-GCM under a key drawn for the entry, bound to the
//! entry's Redis key: [`Sealer::encrypt`]), and named by a MAC of its whole cache key
//! ([`Sealer::entry_names`]); its host and path, which a purge by prefix matches, are kept
//! encrypted in an index of the entries ([`INDEX_KEY`], [`Sealer::index_member`]) that a
//! purge walks. Every purge is published encrypted the same way (one only tagged, as
//! gateways before sent them, is still applied). An entry or purge that does not open
//! under the key is neither served nor applied. Whoever can read Redis then reads no
//! answer and no citizen's id, query, host or path; whoever can write to it, or to the
//! link, can delete entries but not choose what a citizen is served. The fleet-wide rate
//! limits' counters in the same Redis are named by a MAC under the key
//! ([`L2::counter_key`]), not by a client's address or user.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use edgegate_config::{Redis, RouteCache};
use edgegate_filters::cache::{stored_by_a_gateway, Cached, ResponseCache, MAX_ENTRY_BYTES};
use hmac::{Hmac, Mac};
use http::{HeaderName, HeaderValue};
use redis::aio::MultiplexedConnection;
use sha2::Sha256;

use crate::balancer::clock::now_ms;
use pingora_core::server::ShutdownWatch;

/// Channel on which purges are published.
pub const PURGE_CHANNEL: &str = "edgegate:cache:purge";
/// Failures in a row that open the breaker, and how long it stays open.
const BREAKER_FAILURES: u32 = 3;
const BREAKER_OPEN: Duration = Duration::from_secs(5);
const KEY_PREFIX: &str = "edgegate:cache:";
/// The most bytes an entry a gateway stored takes in Redis: a body of at most
/// `MAX_ENTRY_BYTES`, a pod's head of at most 1 MiB (the most Pingora reads of one), and the
/// layout's lengths.
const MOST_STORED: usize = MAX_ENTRY_BYTES + (1 << 20) + (64 << 10);
/// The first byte of a sealed purge (an entry's own layout starts with 1).
const SEALED: u8 = 2;
/// A sealed value's head: that byte and the tag.
const SEAL_BYTES: usize = 1 + 32;
/// The first byte of an encrypted entry.
const ENCRYPTED: u8 = 3;
/// The random bytes an entry's own key is drawn from.
const SALT_BYTES: usize = 16;
/// An encrypted entry's bytes beyond the entry: the first byte, the salt, the AEAD tag.
const ENCRYPTED_BYTES: usize = 1 + SALT_BYTES + 16;
/// What an entry's own key is a MAC over (with its Redis key and salt), so that no such key
/// is any tag or name.
const ENTRY_KEY: &[u8] = b"edgegate cache entry key 1";
/// What an entry's name is a MAC over (with its whole cache key).
const ENTRY_NAME: &[u8] = b"edgegate cache entry name 2";
/// With the fleet's key, an entry's Redis key: this and 32 hex digits
/// ([`Sealer::entry_names`]). The name of an entry stored without the key holds its cache
/// key, and so a newline; no sealed name does, so the two are never alike.
const SEALED_PREFIX: &str = "edgegate:cache:sealed:";
/// With the fleet's key, the index of the entries in Redis that a purge by prefix walks: a
/// sorted set, one member per entry ([`Sealer::index_member`]) scored by when the entry
/// expires. Outside the entries' prefix, so no purge's pattern names it.
pub const INDEX_KEY: &str = "edgegate:cache-index";
/// The longest index member a gateway writes: its name's 16 bytes, the tag's 16, and a host
/// and path of up to 16 KiB (an entry whose would be longer is not stored in Redis). Longer
/// members are no gateway's: a purge drops them unread.
const MOST_MEMBER: usize = 32 + (16 << 10);
/// One page of a purge's walk of the index, run by Redis: `ZSCAN` (1,000 members at a time,
/// as a hint), the members a gateway could have written returned without their scores,
/// longer ones removed where they are — so a page read back is at most ~16 MiB, however long
/// the members whoever writes to Redis put there.
const INDEX_PAGE: &str = r#"
local page = redis.call('ZSCAN', KEYS[1], ARGV[1], 'COUNT', 1000)
local most, kept = tonumber(ARGV[2]), {}
for i = 1, #page[2], 2 do
  local member = page[2][i]
  if #member <= most then kept[#kept + 1] = member else redis.call('ZREM', KEYS[1], member) end
end
return {page[1], kept}
"#;
/// One page of a purge's walk of the names that say their host and path (entries stored
/// without the key, or before names were MACs): `SCAN … MATCH`, and the names found deleted
/// by Redis itself; the cursor and how many went come back.
const PURGE_NAMES: &str = r#"
local page = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', 1000)
for _, name in ipairs(page[2]) do redis.call('DEL', name) end
return {page[1], #page[2]}
"#;
/// What the index's cipher key is a MAC over.
const INDEX_CIPHER: &[u8] = b"edgegate cache index key 1";
/// How long past its entry's expiry a member stays in the index: nodes' clocks differ, and
/// a member dropped while its entry lives would keep the entry from every purge.
const INDEX_SLACK_MS: u64 = 60_000;
/// The shortest key accepted: 256 bits, the tag's own strength.
pub const MIN_KEY_BYTES: usize = 32;

/// The fleet's key for the tags on Redis entries and purges, and during a rotation the key
/// before it, which opens but never seals.
pub struct Sealer {
    key: Hmac<Sha256>,
    previous: Option<Hmac<Sha256>>,
    /// The index's cipher under `key`, then under `previous`: drawn once, not per entry
    /// stored.
    index: Vec<ring::aead::LessSafeKey>,
}

impl Sealer {
    /// Reads the key from `path` (a regular file of at most 1 MiB, as every key file): its
    /// bytes, less trailing whitespace (a newline an editor adds), at least
    /// [`MIN_KEY_BYTES`] of them.
    pub fn load(path: &std::path::Path) -> Result<Sealer, String> {
        let bytes = edgegate_config::files::read(path, edgegate_config::files::KEY_FILE)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
        if end < MIN_KEY_BYTES {
            return Err(format!(
                "{}: the key is {end} bytes; at least {MIN_KEY_BYTES} are needed (e.g. `openssl rand -base64 32`)",
                path.display()
            ));
        }
        Sealer::new(&bytes[..end]).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A sealer under `key` as given (HMAC takes any length; [`Sealer::load`] is what
    /// holds a key file to [`MIN_KEY_BYTES`]).
    pub fn new(key: &[u8]) -> Result<Sealer, String> {
        <Hmac<Sha256> as Mac>::new_from_slice(key).map(|k| Sealer::of(k, None)).map_err(|e| e.to_string())
    }

    /// This sealer, also opening what `previous` sealed (its own previous key dropped).
    pub fn with_previous(self, previous: Sealer) -> Sealer {
        Sealer::of(self.key, Some(previous.key))
    }

    /// A sealer under `key` (and opening under `previous`), with the index's ciphers drawn.
    fn of(key: Hmac<Sha256>, previous: Option<Hmac<Sha256>>) -> Sealer {
        let index = [Some(&key), previous.as_ref()].into_iter().flatten().filter_map(Sealer::index_cipher).collect();
        Sealer { key, previous, index }
    }

    /// The MAC over `what` (entry or purge), the Redis key it is stored at (so that an
    /// entry copied to another key, another citizen's on a `per_user` route, fails), and
    /// the bytes. Each of the first two is length-prefixed, so no two inputs run together
    /// alike.
    fn mac(under: &Hmac<Sha256>, what: &[u8], key: &str, bytes: &[u8]) -> Hmac<Sha256> {
        let mut mac = under.clone();
        for part in [what, key.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(bytes);
        mac
    }

    /// `bytes` as stored under `key`: the seal byte, the tag, the bytes.
    pub fn seal(&self, what: &[u8], key: &str, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(SEAL_BYTES + bytes.len());
        out.push(SEALED);
        out.extend_from_slice(&Sealer::mac(&self.key, what, key, bytes).finalize().into_bytes());
        out.extend_from_slice(bytes);
        out
    }

    /// The bytes `sealed` carries, if its tag is this key's (or the previous key's) for
    /// `what` at `key` (compared in constant time).
    pub fn open<'a>(&self, what: &[u8], key: &str, sealed: &'a [u8]) -> Option<&'a [u8]> {
        let (&first, rest) = sealed.split_first()?;
        let (tag, bytes) = rest.split_at_checked(SEAL_BYTES - 1)?;
        let valid = |under: &Hmac<Sha256>| Sealer::mac(under, what, key, bytes).verify_slice(tag).is_ok();
        (first == SEALED && (valid(&self.key) || self.previous.as_ref().is_some_and(valid))).then_some(bytes)
    }

    /// The AES-256-GCM key of one entry: a MAC under `under` over the entry's Redis key and
    /// its salt. Each entry has a key of its own, drawn from 128 random bits, so the
    /// cipher's nonce can be fixed (each key encrypts once) and no bound on how many entries
    /// a fleet writes under one key comes from random nonces colliding.
    fn entry_key(under: &Hmac<Sha256>, key: &str, salt: &[u8]) -> Option<ring::aead::LessSafeKey> {
        let derived = Sealer::mac(under, ENTRY_KEY, key, salt).finalize().into_bytes();
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &derived).ok()?;
        Some(ring::aead::LessSafeKey::new(unbound))
    }

    /// `bytes` as stored under `key`: encrypted and authenticated under this key (never the
    /// previous one), bound to `key` and to `what`. `None` only when the system's random
    /// source fails (the entry is then not stored).
    pub fn encrypt(&self, what: &[u8], key: &str, bytes: &[u8]) -> Option<Vec<u8>> {
        use ring::rand::SecureRandom;
        let mut salt = [0u8; SALT_BYTES];
        ring::rand::SystemRandom::new().fill(&mut salt).ok()?;
        let cipher = Sealer::entry_key(&self.key, key, &salt)?;
        let mut out = Vec::with_capacity(ENCRYPTED_BYTES + bytes.len());
        out.push(ENCRYPTED);
        out.extend_from_slice(&salt);
        out.extend_from_slice(bytes);
        let nonce = ring::aead::Nonce::assume_unique_for_key([0; 12]);
        let tag =
            cipher.seal_in_place_separate_tag(nonce, ring::aead::Aad::from(what), &mut out[1 + SALT_BYTES..]).ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    /// The bytes `encrypted` carries, if it was encrypted by [`Sealer::encrypt`] under
    /// this key (or the previous one) for `what` at `key`, and not changed since.
    pub fn decrypt(&self, what: &[u8], key: &str, encrypted: &[u8]) -> Option<Vec<u8>> {
        let (&first, rest) = encrypted.split_first()?;
        let (salt, sealed) = rest.split_at_checked(SALT_BYTES)?;
        if first != ENCRYPTED || sealed.len() < ENCRYPTED_BYTES - 1 - SALT_BYTES {
            return None;
        }
        [Some(&self.key), self.previous.as_ref()].into_iter().flatten().find_map(|under| {
            let cipher = Sealer::entry_key(under, key, salt)?;
            let mut bytes = sealed.to_vec();
            let nonce = ring::aead::Nonce::assume_unique_for_key([0; 12]);
            let len = cipher.open_in_place(nonce, ring::aead::Aad::from(what), &mut bytes).ok()?.len();
            bytes.truncate(len);
            Some(bytes)
        })
    }

    /// The Redis key of the entry whose cache key is `cache_key` (`host\npath\n` and the
    /// rest: query, user, port, varying fields): `edgegate:cache:sealed:` and 32 hex digits
    /// of a MAC of the whole cache key under this key — and under the previous key, while
    /// there is one, as a second name to look for (what nodes on that key stored). Entries
    /// are stored under the first name only. The name says nothing of the host, the path or
    /// the rest; a purge by prefix finds entries through the index ([`Sealer::index_member`]).
    fn entry_names(&self, cache_key: &str) -> (String, Option<String>) {
        (
            Sealer::entry_name(&Sealer::entry_digest(&self.key, cache_key)),
            self.previous.as_ref().map(|previous| Sealer::entry_name(&Sealer::entry_digest(previous, cache_key))),
        )
    }

    /// The first 128 bits of the MAC under `under` naming the entry of `cache_key`.
    fn entry_digest(under: &Hmac<Sha256>, cache_key: &str) -> [u8; 16] {
        let digest = Sealer::mac(under, ENTRY_NAME, "", cache_key.as_bytes()).finalize().into_bytes();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        first
    }

    /// The Redis key of the entry whose name digest is `digest`.
    fn entry_name(digest: &[u8; 16]) -> String {
        let mut name = String::with_capacity(SEALED_PREFIX.len() + 32);
        name.push_str(SEALED_PREFIX);
        edgegate_filters::hex::push(digest, &mut name);
        name
    }

    /// The Redis key an entry is stored under, and its member in the index of sealed
    /// entries: its name under this key only.
    pub fn stored_name(&self, cache_key: &str) -> (String, Option<Vec<u8>>) {
        let digest = Sealer::entry_digest(&self.key, cache_key);
        (Sealer::entry_name(&digest), self.index_member(&digest, cache_key))
    }

    /// The AES-256-GCM key of the index of sealed entries under `under`.
    fn index_cipher(under: &Hmac<Sha256>) -> Option<ring::aead::LessSafeKey> {
        let derived = Sealer::mac(under, INDEX_CIPHER, INDEX_KEY, b"").finalize().into_bytes();
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &derived).ok()?;
        Some(ring::aead::LessSafeKey::new(unbound))
    }

    /// The index's member for the entry named by `digest` (of `cache_key`): the digest's 16
    /// bytes, then the entry's host and path as a purge matches them (`host/path`),
    /// encrypted and authenticated under a key drawn from this sealer's key with the first 12 bytes
    /// of the digest as the nonce and the digest bound in. One cache key is one host and
    /// path, so a nonce is only ever used again for the same text (the same member: the
    /// index then holds one member for an entry stored again). `None` only if the cipher
    /// cannot be made.
    fn index_member(&self, digest: &[u8; 16], cache_key: &str) -> Option<Vec<u8>> {
        let cipher = self.index.first()?;
        let mut parts = cache_key.splitn(3, '\n');
        let (host, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let mut out = Vec::with_capacity(16 + host.len() + path.len() + 16);
        out.extend_from_slice(digest);
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(path.as_bytes());
        let nonce = Sealer::index_nonce(digest);
        let tag = cipher.seal_in_place_separate_tag(nonce, ring::aead::Aad::from(digest), &mut out[16..]).ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    /// The Redis key and the `host/path` of the entry an index member names, if the member
    /// opens under this key or the previous one (a member that does not open is no entry
    /// this node can serve, and no purge of it is this node's to make).
    pub fn indexed(&self, ciphers: &[ring::aead::LessSafeKey], member: &[u8]) -> Option<(String, String)> {
        let digest = Sealer::member_digest(member)?;
        let sealed = &member[16..];
        ciphers.iter().find_map(|cipher| {
            let mut bytes = sealed.to_vec();
            let nonce = Sealer::index_nonce(digest);
            let url = cipher.open_in_place(nonce, ring::aead::Aad::from(digest), &mut bytes).ok()?;
            let url = std::str::from_utf8(url).ok()?.to_owned();
            Some((Sealer::entry_name(digest), url))
        })
    }

    /// The digest naming the entry an index member is for: its first 16 bytes.
    fn member_digest(member: &[u8]) -> Option<&[u8; 16]> {
        member.get(..16)?.try_into().ok()
    }

    /// An index member's nonce: the first 12 bytes of its entry's digest.
    fn index_nonce(digest: &[u8; 16]) -> ring::aead::Nonce {
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&digest[..12]);
        ring::aead::Nonce::assume_unique_for_key(nonce)
    }

    /// The index's ciphers under this key and the previous one.
    pub fn index_ciphers(&self) -> &[ring::aead::LessSafeKey] {
        &self.index
    }
}

/// What a tag is over, so that a purge's tag never passes for an entry's.
pub const ENTRY: &[u8] = b"edgegate cache entry 1";
pub const PURGE: &[u8] = b"edgegate cache purge 1";
/// What a rate counter's name is a MAC over, so that no name is any entry's or purge's tag.
const COUNTER: &[u8] = b"edgegate rate counter 1";
/// Hex digits of a counter's name kept: 128 bits, far from two keys of one route sharing a
/// counter in a second.
const COUNTER_NAME_HEX: usize = 32;
/// Prefix of the fleet-wide rate limits' counters.
const COUNTER_PREFIX: &str = "edgegate:rl:";

impl Sealer {
    /// The name standing for `key` (a client's address, a user, a header's value) in the
    /// counter of `route` for the Unix second `window`: the first [`COUNTER_NAME_HEX`] hex
    /// digits of a MAC over the three. Under the previous key while there is one: during
    /// the first rollout of a rotation every node has that key, the rolled-out ones as
    /// `previous_key_file`, the others as `key_file`, and all of them count a client
    /// together.
    fn counter_name(&self, route: &str, window: u64, key: &str) -> String {
        let mut mac = self.previous.as_ref().unwrap_or(&self.key).clone();
        for part in [COUNTER, route.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(&window.to_be_bytes());
        mac.update(key.as_bytes());
        let digest = mac.finalize().into_bytes();
        edgegate_filters::audit::record::hex(digest.get(..COUNTER_NAME_HEX / 2).unwrap_or_default())
    }
}

/// Redis connections an [`L2`] keeps, one per no-steal worker up to this many workers.
const CONNECTION_SLOTS: usize = 64;

pub struct L2 {
    client: redis::Client,
    /// The fleet's key (`cache.redis.key_file`); `None` only for a Redis on loopback.
    sealer: Option<Sealer>,
    timeout: Duration,
    /// The Redis connection of each no-steal worker (by [`crate::peer::worker_pool`], modulo
    /// [`CONNECTION_SLOTS`]; the workers of a work-stealing runtime share slot 0). A
    /// multiplexed connection's reads and writes run in a task on the runtime that opened
    /// it: shared, every other worker's lookup would wake that worker and wait while it is
    /// busy, as a pod connection would (`peer.rs`).
    connections: Box<[ArcSwapOption<MultiplexedConnection>]>,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    pub errors: AtomicU64,
    pub hits: AtomicU64,
    /// When this node last dropped the index's long-expired members (Unix ms).
    pruned_ms: AtomicU64,
    /// Time spent on Redis lookups.
    pub lookup: crate::metrics::family::AtomicHistogram,
}

impl L2 {
    /// Connects lazily to `config.url`; reads the key file (relative to `base`, the
    /// config's directory) now.
    pub fn new(config: &Redis, base: &std::path::Path) -> Result<L2, String> {
        let client = client(config, base)?;
        let load = |path: Option<&std::path::PathBuf>, field: &str| {
            path.map(|p| Sealer::load(&base.join(p)).map_err(|e| format!("{field}: {e}"))).transpose()
        };
        // Validation allows `previous_key_file` only beside `key_file`.
        let sealer = match (
            load(config.key_file.as_ref(), "cache.redis.key_file")?,
            load(config.previous_key_file.as_ref(), "cache.redis.previous_key_file")?,
        ) {
            (Some(sealer), Some(previous)) => Some(sealer.with_previous(previous)),
            (sealer, _) => sealer,
        };
        Ok(L2 {
            client,
            sealer,
            timeout: config.timeout,
            connections: (0..CONNECTION_SLOTS).map(|_| ArcSwapOption::empty()).collect(),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            pruned_ms: AtomicU64::new(0),
            lookup: crate::metrics::family::AtomicHistogram::default(),
        })
    }

    /// A handle on the same Redis (over TLS with the same CAs), for the fleet-wide rate
    /// limits' own connection.
    pub fn client(&self) -> redis::Client {
        self.client.clone()
    }

    /// The Redis key of the fleet-wide counter of `route` for `key` (a client's address, a
    /// user, a header's value) in the Unix second `window`. With the fleet's key the last
    /// part is a MAC ([`Sealer::counter_name`]): Redis then holds no citizen's address or
    /// user, whoever can write to it cannot find one client's counter to fill (and so
    /// refuse that client), and a name says nothing of the client beyond its second and
    /// route — the same client's names differ from second to second. Without a key (a Redis
    /// on loopback) the key as it is.
    pub fn counter_key(&self, route: &str, window: u64, key: &str) -> String {
        match &self.sealer {
            Some(sealer) => format!("{COUNTER_PREFIX}{route}:{window}:{}", sealer.counter_name(route, window, key)),
            None => format!("{COUNTER_PREFIX}{route}:{window}:{key}"),
        }
    }

    /// Whether this node's next store also drops the index's long-expired members: once a
    /// second at most (the drop is a walk of the index's oldest scores; once a store it
    /// cost Redis more than the store).
    fn prune_due(&self, now: u64) -> bool {
        due(&self.pruned_ms, now, 1_000)
    }

    /// Is the breaker open (Redis being skipped)?
    pub fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Relaxed) > now_ms()
    }

    /// This worker's slot in [`L2::connections`].
    fn slot(&self) -> &ArcSwapOption<MultiplexedConnection> {
        &self.connections[crate::peer::worker_pool() as usize % self.connections.len()]
    }

    async fn connection(&self) -> Option<MultiplexedConnection> {
        let slot = self.slot();
        if let Some(c) = &*slot.load() {
            return Some((**c).clone());
        }
        let config = connection_config(self.timeout);
        match tokio::time::timeout(self.timeout, self.client.get_multiplexed_async_connection_with_config(&config))
            .await
        {
            Ok(Ok(c)) => {
                slot.store(Some(Arc::new(c.clone())));
                Some(c)
            }
            _ => {
                self.failed();
                None
            }
        }
    }

    fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.slot().store(None);
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= BREAKER_FAILURES {
            self.open_until_ms.store(now_ms() + BREAKER_OPEN.as_millis() as u64, Ordering::Relaxed);
            self.failures.store(0, Ordering::Relaxed);
            tracing::warn!(open_for_ms = BREAKER_OPEN.as_millis() as u64, "redis failing: cache runs L1-only for now");
        }
    }

    fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A fresh entry from Redis that a gateway could have stored for route `route` (whose
    /// cache settings are `rc`), or `None` (miss, breaker open, error, timeout, or an entry
    /// no gateway stores).
    ///
    /// At most `MOST_STORED` bytes are read (`GETRANGE`, not `GET`): whoever can write to
    /// Redis could otherwise set a value of hundreds of MiB at a key, and every node that
    /// looked it up would read it whole, once per request missing its memory (eight
    /// requests for a 64 MiB value took a node's resident memory to 708 MiB), for as long as
    /// the timeout allows.
    pub async fn get(&self, key: &str, rc: &RouteCache, route: &str) -> Option<Cached> {
        if self.is_open() {
            return None;
        }
        let started = Instant::now();
        let mut conn = self.connection().await?;
        // Under the key's name; while rotating, what nodes on the previous key stored too.
        let (redis_key, previous) = match &self.sealer {
            Some(sealer) => sealer.entry_names(key),
            None => (format!("{KEY_PREFIX}{key}"), None),
        };
        let mut found = None;
        for name in std::iter::once(redis_key).chain(previous) {
            // The end is inclusive: one byte more than an entry can take tells a larger value.
            let cmd = redis::cmd("GETRANGE").arg(&name).arg(0).arg(MOST_STORED + ENCRYPTED_BYTES).to_owned();
            let answer = tokio::time::timeout(self.timeout, cmd.query_async::<Vec<u8>>(&mut conn)).await;
            let Ok(Ok(bytes)) = answer else {
                self.lookup.observe(started.elapsed());
                self.failed();
                return None;
            };
            // A key that is not there reads as nothing.
            if !bytes.is_empty() {
                found = Some((name, bytes));
                break;
            }
        }
        self.lookup.observe(started.elapsed());
        self.succeeded();
        let (redis_key, bytes) = found?;
        let stored = match &self.sealer {
            Some(sealer) => match sealer.decrypt(ENTRY, &redis_key, &bytes) {
                Some(stored) => stored,
                None => {
                    self.foreign(route, "a Redis cache entry is not sealed with this fleet's key (cache.redis.key_file) for its key: not served");
                    return None;
                }
            },
            None => bytes,
        };
        let ours = (stored.len() <= MOST_STORED).then(|| decode(&stored)).flatten().filter(|entry| {
            entry.body.len() <= MAX_ENTRY_BYTES && stored_by_a_gateway(entry.status, &entry.headers, rc)
        });
        let Some(entry) = ours else {
            self.foreign(
                route,
                "a Redis cache entry is larger than a gateway stores or holds fields none stores: not served",
            );
            return None;
        };
        (entry.age() < entry.fresh_for).then(|| {
            self.hits.fetch_add(1, Ordering::Relaxed);
            entry
        })
    }

    /// An entry no gateway stores: too large, not in the layout, with fields a gateway
    /// never keeps (framing a client would read another way), or without the fleet's tag
    /// for its key. Never served (the request goes on as a miss, whose answer replaces it),
    /// counted with Redis's errors, and said (`what`) at most every 10 s.
    fn foreign(&self, route: &str, what: &'static str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        static SAID_MS: AtomicU64 = AtomicU64::new(0);
        if say_again(&SAID_MS) {
            // Not the key: on a `per_user` route it names the citizen.
            tracing::warn!(route, "{what}");
        }
    }

    /// Stores an entry in the background; the request does not wait.
    pub fn put(self: &Arc<Self>, key: String, entry: &Cached) {
        if self.is_open() {
            return;
        }
        let bytes = encode(entry);
        let keep = entry.kept_for();
        let l2 = Arc::clone(self);
        tokio::spawn(async move {
            let Some(mut conn) = l2.connection().await else { return };
            let keep_ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX).max(1);
            let mut pipe = redis::pipe();
            let mut indexed = None;
            match &l2.sealer {
                Some(sealer) => {
                    let (name, member) = sealer.stored_name(&key);
                    let Some(member) = member.filter(|m| m.len() <= MOST_MEMBER) else { return };
                    let Some(value) = sealer.encrypt(ENTRY, &name, &bytes) else { return };
                    // The entry's member in the index first, scored by when the entry
                    // expires (raised only: another node may have stored it for longer),
                    // then the entry: commands on one connection run in order, so no entry
                    // is stored before a purge can find it. Once a second the members long
                    // expired are dropped.
                    let now = now_ms();
                    pipe.cmd("ZADD").arg(INDEX_KEY).arg("GT").arg(now.saturating_add(keep_ms)).arg(member).ignore();
                    if l2.prune_due(now) {
                        let before = format!("({}", now.saturating_sub(INDEX_SLACK_MS));
                        pipe.cmd("ZREMRANGEBYSCORE").arg(INDEX_KEY).arg("-inf").arg(before).ignore();
                    }
                    pipe.cmd("SET").arg(&name).arg(value).arg("PX").arg(keep_ms).ignore();
                    indexed = Some(name);
                }
                None => {
                    pipe.cmd("SET").arg(format!("{KEY_PREFIX}{key}")).arg(bytes).arg("PX").arg(keep_ms).ignore();
                }
            }
            match tokio::time::timeout(l2.timeout, pipe.query_async::<()>(&mut conn)).await {
                Ok(Ok(())) => l2.succeeded(),
                answer => {
                    l2.failed();
                    let Ok(Err(refused)) = answer else { return };
                    // Redis's own words (a Redis older than 6.2 refuses `ZADD … GT`, a user's
                    // ACL a command, a full Redis a write), at most every 10 s.
                    static SAID_MS: AtomicU64 = AtomicU64::new(0);
                    if say_again(&SAID_MS) {
                        tracing::warn!(error = %refused, "redis refused to store a cache entry");
                    }
                    // A command refused (the index not a sorted set, Redis out of memory)
                    // may have left the entry stored without its member: it goes, so that
                    // no purge misses it.
                    if let Some(name) = indexed {
                        let del = redis::cmd("DEL").arg(name).to_owned();
                        let _ = tokio::time::timeout(l2.timeout, del.query_async::<i64>(&mut conn)).await;
                    }
                }
            }
        });
    }

    /// Publishes a purge to every gateway sharing this Redis (this one included) and
    /// drops matching entries from Redis: with the fleet's key those the index names
    /// ([`L2::purge_index`]), and, by their names, any stored without it or before sealed
    /// entries were named by a MAC alone. Answers how many entries it deleted from Redis.
    pub async fn publish_purge(&self, prefix: &str) -> Result<u64, String> {
        let mut conn = self.connection().await.ok_or("redis unavailable")?;
        let mut deleted = 0;
        if let Some(sealer) = &self.sealer {
            deleted += self.purge_index(sealer, &mut conn, prefix).await?;
        }
        // Names `host\npath\n…`; the purge prefix is `host/path…`. With the key, a host's
        // pattern asks for the newline, so that a sealed name is never taken for a host's.
        let (host, path) = prefix.split_once('/').map_or((prefix, None), |(h, p)| (h, Some(p)));
        let mut pattern = format!("{KEY_PREFIX}{}", glob_escape(host));
        match path {
            Some(p) => pattern.push_str(&format!("\n/{}*", glob_escape(p))),
            None if self.sealer.is_some() => pattern.push_str("*\n*"),
            None => pattern.push('*'),
        }
        // Deleted where they are: no name is read back (whoever writes to Redis chooses
        // how long a name is, up to 512 MiB).
        let mut cursor: u64 = 0;
        loop {
            let scan = redis::cmd("EVAL").arg(PURGE_NAMES).arg(0).arg(cursor).arg(&pattern).to_owned();
            let (next, names): (u64, u64) = self.purge_step(scan.query_async(&mut conn)).await?;
            deleted += names;
            if next == 0 {
                break;
            }
            cursor = next;
        }
        // With the key the prefix crosses the link and the channel encrypted: a path may name
        // a citizen's case, and whoever can subscribe (or read a plain link) would read it.
        let message = match &self.sealer {
            Some(sealer) => sealer
                .encrypt(PURGE, PURGE_CHANNEL, prefix.as_bytes())
                .ok_or("no random bytes to encrypt the purge with")?,
            None => prefix.as_bytes().to_vec(),
        };
        let publish = redis::cmd("PUBLISH").arg(PURGE_CHANNEL).arg(message).to_owned();
        tokio::time::timeout(self.timeout, publish.query_async::<i64>(&mut conn))
            .await
            .map_err(|_| "redis timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(deleted)
    }

    /// Drops the sealed entries whose `host/path` starts with `prefix`, walking the index a
    /// page at a time: each member is opened (the host and path are in no name), and the
    /// entries matching are deleted with their members, and those whose member this node
    /// cannot open (during a key rotation) whatever their path. An entry stored while the walk is
    /// under way may outlive it, as one stored just after the purge would.
    async fn purge_index(
        &self,
        sealer: &Sealer,
        conn: &mut MultiplexedConnection,
        prefix: &str,
    ) -> Result<u64, String> {
        let ciphers = sealer.index_ciphers();
        let (mut cursor, mut deleted) = (0u64, 0u64);
        loop {
            let scan = redis::cmd("EVAL").arg(INDEX_PAGE).arg(1).arg(INDEX_KEY).arg(cursor).arg(MOST_MEMBER).to_owned();
            let (next, items): (u64, Vec<Vec<u8>>) = self.purge_step(scan.query_async(conn)).await?;
            let mut names = Vec::new();
            let mut members = Vec::new();
            for member in &items {
                match sealer.indexed(ciphers, member) {
                    Some((name, url)) if url.starts_with(prefix) => {
                        names.push(name);
                        members.push(member);
                    }
                    // What no key of this node opens — sealed under a key on the other side
                    // of a rotation (the old one, on a node that no longer has it; the new
                    // one, on a node not yet given it), or planted — is taken by any purge:
                    // this node cannot tell which path it is for, and a cache entry dropped
                    // costs a miss where one kept could serve what was purged. The member's
                    // first 16 bytes name its entry.
                    None => {
                        if let Some(digest) = Sealer::member_digest(member) {
                            names.push(Sealer::entry_name(digest));
                            members.push(member);
                        }
                    }
                    _ => {}
                }
            }
            if !names.is_empty() {
                let mut drop = redis::pipe();
                drop.atomic().cmd("DEL").arg(&names).cmd("ZREM").arg(INDEX_KEY).arg(&members).ignore();
                // Entries already expired are not counted.
                let (gone,): (u64,) = self.purge_step(drop.query_async(conn)).await?;
                deleted += gone;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// One step of a purge, given ten times the lookups' timeout.
    async fn purge_step<T>(&self, step: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
        tokio::time::timeout(self.timeout.saturating_mul(PURGE_STEP_TIMEOUTS), step)
            .await
            .map_err(|_| "redis timed out".to_owned())?
            .map_err(|e| e.to_string())
    }

    /// Applies purges published by any gateway to this gateway's L1 until the server shuts
    /// down; reconnects after errors.
    pub async fn follow_purges(&self, cache: &ResponseCache, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = self.purge_loop(cache) => {}
            _ = shutdown.changed() => {}
        }
    }

    async fn purge_loop(&self, cache: &ResponseCache) {
        loop {
            if let Ok(mut pubsub) = self.client.get_async_pubsub().await {
                if pubsub.subscribe(PURGE_CHANNEL).await.is_ok() {
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = futures_next(&mut messages).await {
                        let Ok(payload) = msg.get_payload::<Vec<u8>>() else { continue };
                        if let Some(prefix) = self.published_prefix(&payload) {
                            // Whoever can publish on the channel chooses the prefix: the log
                            // line carries its first 256 characters and its length, so a
                            // published megabyte is not a megabyte logged on every node.
                            let shown: String = prefix.chars().take(256).collect();
                            if let Err(e) = cache.purge(&prefix) {
                                let bytes = prefix.len();
                                tracing::warn!(error = %e, prefix = %shown, bytes, "applying a published purge failed");
                            } else {
                                tracing::info!(prefix = %shown, bytes = prefix.len(), "cache purged (published)");
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The prefix a published purge names, if it is one to apply: with the fleet's key, only
    /// one encrypted under it — or tagged under it, as gateways before encrypted purges sent
    /// them, so that their purges still apply during an upgrade — (whoever can publish on
    /// the channel could otherwise empty every node's memory of its cached answers at will);
    /// either way, text. A message refused is counted with Redis's errors and said at most
    /// every 10 s.
    fn published_prefix(&self, payload: &[u8]) -> Option<String> {
        let bytes = match &self.sealer {
            Some(sealer) if payload.first() == Some(&ENCRYPTED) => sealer.decrypt(PURGE, PURGE_CHANNEL, payload),
            Some(sealer) => sealer.open(PURGE, PURGE_CHANNEL, payload).map(<[u8]>::to_vec),
            None => Some(payload.to_vec()),
        };
        let text = bytes.and_then(|bytes| String::from_utf8(bytes).ok());
        if text.is_none() {
            self.errors.fetch_add(1, Ordering::Relaxed);
            static SAID_MS: AtomicU64 = AtomicU64::new(0);
            if say_again(&SAID_MS) {
                tracing::warn!(
                    bytes = payload.len(),
                    "a published purge is not sealed with this fleet's key (cache.redis.key_file) or not text: not applied"
                );
            }
        }
        text
    }
}

/// How a multiplexed connection to Redis is opened for a gateway whose `cache.redis.timeout`
/// is `timeout`. Each command is bounded by its caller (a lookup by `timeout`, a purge step
/// by ten times it): the Redis client's own bounds (500 ms a reply, 1 s to connect, by
/// default) would otherwise cut every wait longer than those short, whatever the config
/// says — a purge step over a large index or a busy Redis failed at 500 ms. The client
/// keeps a bound of its own, the longest any caller waits, so that no command waits
/// forever.
pub(crate) fn connection_config(timeout: Duration) -> redis::AsyncConnectionConfig {
    let longest = timeout.saturating_mul(PURGE_STEP_TIMEOUTS).max(Duration::from_millis(200));
    redis::AsyncConnectionConfig::new().set_response_timeout(Some(longest)).set_connection_timeout(Some(longest))
}

/// How many lookup timeouts one step of a purge may take ([`L2::purge_step`]).
const PURGE_STEP_TIMEOUTS: u32 = 10;

/// Whether a warning last said at `said` (Unix ms, 0 for never) may be said again: at most
/// every 10 s, by one caller at a time (which then records now).
fn say_again(said: &AtomicU64) -> bool {
    due(said, now_ms(), 10_000)
}

/// Whether something last done at `last` (Unix ms, 0 for never) is due again at `now`: at
/// most every `every_ms`, by one caller at a time (which then records `now`).
fn due(last: &AtomicU64, now: u64, every_ms: u64) -> bool {
    let then = last.load(Ordering::Relaxed);
    (then == 0 || now.saturating_sub(then) >= every_ms)
        && last.compare_exchange(then, now.max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

/// The client for `config.url`: over TLS for `rediss://`, verifying Redis's certificate
/// against `config.ca` (a PEM bundle read now, relative to `base`) or the system's roots.
fn client(config: &Redis, base: &std::path::Path) -> Result<redis::Client, String> {
    let Some(ca) = &config.ca else {
        return redis::Client::open(config.url.as_str()).map_err(|e| format!("cache.redis.url: {e}"));
    };
    let path = base.join(ca);
    let pem = edgegate_config::files::read(&path, edgegate_config::files::CA_BUNDLE)
        .map_err(|e| format!("cache.redis.ca: cannot read {}: {e}", path.display()))?;
    // The client would take a file of no certificates and trust nothing, failing only when
    // it connects: refuse it here, where `edgegate check` sees it.
    use rustls_pki_types::pem::PemObject;
    let certificates = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cache.redis.ca: {}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("cache.redis.ca: {}: no PEM certificate in it", path.display()));
    }
    let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
    redis::Client::build_with_tls(config.url.as_str(), certificates).map_err(|e| format!("cache.redis.ca: {e}"))
}

/// Escapes Redis glob metacharacters.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

async fn futures_next<S: futures_util::Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    use futures_util::StreamExt;
    s.next().await
}

/// Binary-safe layout: version, status, freshness windows (ms), stored time (Unix ms),
/// headers as length-prefixed name/value pairs, then the body.
pub fn encode(e: &Cached) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + e.body.len());
    out.push(1u8);
    out.extend_from_slice(&e.status.to_be_bytes());
    for d in [e.fresh_for, e.stale_for, e.revalidate_for] {
        out.extend_from_slice(&(d.as_millis() as u64).to_be_bytes());
    }
    let stored = SystemTime::now().checked_sub(e.age()).unwrap_or(UNIX_EPOCH);
    out.extend_from_slice(&(stored.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()) as u64).to_be_bytes());
    out.extend_from_slice(&(e.headers.len() as u32).to_be_bytes());
    for (n, v) in &e.headers {
        for part in [n.as_str().as_bytes(), v.as_bytes()] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out.extend_from_slice(&e.body);
    out
}

pub fn decode(bytes: &[u8]) -> Option<Cached> {
    let mut r = Reader(bytes);
    if r.take(1)? != [1u8] {
        return None;
    }
    let status = u16::from_be_bytes(r.take(2)?.try_into().ok()?);
    let mut ms = || -> Option<u64> { Some(u64::from_be_bytes(r.take(8)?.try_into().ok()?)) };
    let (fresh, stale, revalidate, stored) = (ms()?, ms()?, ms()?, ms()?);
    let count = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
    let mut headers = Vec::with_capacity(count.min(256) as usize);
    for _ in 0..count {
        let n = r.take_sized()?;
        let v = r.take_sized()?;
        headers.push((HeaderName::from_bytes(n).ok()?, HeaderValue::from_bytes(v).ok()?));
    }
    let age = SystemTime::now().duration_since(UNIX_EPOCH + Duration::from_millis(stored)).unwrap_or_default();
    Some(Cached {
        status,
        headers,
        body: Bytes::copy_from_slice(r.0),
        stored: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
        fresh_for: Duration::from_millis(fresh),
        stale_for: Duration::from_millis(stale),
        revalidate_for: Duration::from_millis(revalidate),
        head: Default::default(),
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn take_sized(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_the_round_trip_byte_for_byte() {
        let body: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let e = Cached {
            status: 203,
            headers: vec![
                (http::header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (HeaderName::from_static("x-service"), HeaderValue::from_static("permits")),
            ],
            body: Bytes::from(body.clone()),
            stored: Instant::now(),
            fresh_for: Duration::from_secs(30),
            stale_for: Duration::from_secs(600),
            revalidate_for: Duration::from_secs(5),
            head: Default::default(),
        };
        let d = decode(&encode(&e)).expect("decodes");
        assert_eq!(d.status, 203);
        assert_eq!(d.headers, e.headers);
        assert_eq!(&d.body[..], &body[..], "binary body intact");
        assert_eq!((d.fresh_for, d.stale_for, d.revalidate_for), (e.fresh_for, e.stale_for, e.revalidate_for));
        assert!(d.age() < Duration::from_secs(2));
        assert!(decode(&encode(&e)[..20]).is_none(), "truncated input is refused");
        assert!(decode(b"\x02garbage").is_none(), "unknown version is refused");
    }

    /// The read bound must never cut off an entry a gateway stores: the largest one (a body
    /// of `MAX_ENTRY_BYTES`, and a pod's head at Pingora's limits — 1 MiB, 256 fields, the
    /// most fields of the fewest bytes, where the layout's lengths cost most against the
    /// head's own `": "` and line ends) fits in `MOST_STORED`.
    #[test]
    fn the_largest_entry_a_gateway_stores_fits_the_read_bound() {
        let mut headers: Vec<_> = (0..255)
            .map(|i| (HeaderName::try_from(format!("x{i}")).expect("name"), HeaderValue::from_static("v")))
            .collect();
        let head_so_far: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
        let filler = "f".repeat((1 << 20) - head_so_far - 64);
        headers.push((HeaderName::from_static("x-filler"), HeaderValue::try_from(filler).expect("value")));
        let largest = Cached {
            status: 200,
            headers,
            body: Bytes::from(vec![b'b'; MAX_ENTRY_BYTES]),
            stored: Instant::now(),
            fresh_for: Duration::from_secs(30),
            stale_for: Duration::ZERO,
            revalidate_for: Duration::ZERO,
            head: Default::default(),
        };
        let bytes = encode(&largest);
        assert!(bytes.len() <= MOST_STORED, "{} bytes stored, {} read", bytes.len(), MOST_STORED);
        assert_eq!(decode(&bytes).expect("decodes").body.len(), MAX_ENTRY_BYTES);
    }

    #[test]
    fn during_a_rotation_the_previous_key_opens_and_never_seals() {
        let key = |b: u8| Sealer::new(&[b; 32]).expect("key");
        let (old, new) = (key(1), key(2));
        let rotating = key(2).with_previous(key(1));
        let from_old = old.seal(ENTRY, "k", b"answer");
        let from_rotating = rotating.seal(ENTRY, "k", b"answer");
        assert_eq!(rotating.open(ENTRY, "k", &from_old), Some(&b"answer"[..]), "the old key's entries still served");
        assert_eq!(from_rotating, new.seal(ENTRY, "k", b"answer"), "sealed under the new key only");
        assert_eq!(new.open(ENTRY, "k", &from_rotating), Some(&b"answer"[..]));
        assert_eq!(old.open(ENTRY, "k", &from_rotating), None, "a node not yet rotated misses it");
        assert_eq!(new.open(ENTRY, "k", &from_old), None, "the old key dropped: no longer served");
        // The previous key is held to everything the key is: the Redis key, the label.
        assert_eq!(rotating.open(ENTRY, "other", &from_old), None);
        assert_eq!(rotating.open(PURGE, "k", &from_old), None);
        assert_eq!(key(2).with_previous(key(3)).open(ENTRY, "k", &from_old), None, "another previous key");
    }

    /// A sealed value opens only under the key that sealed it, for the Redis key and the
    /// kind (entry, purge) it was sealed for, and only whole: whoever writes to Redis can
    /// neither change a byte, nor move a citizen's entry to another's key, nor pass a purge
    /// off as an entry, nor write an unsealed one.
    #[test]
    fn a_sealed_value_opens_only_as_it_was_sealed() {
        let fleet = Sealer::new(&[7u8; 32]).expect("key");
        let other = Sealer::new(&[8u8; 32]).expect("key");
        let key = "edgegate:cache:zwfw.gov.test\n/permits/1\nuser-a";
        let body = b"\x01the entry's own layout";
        let sealed = fleet.seal(ENTRY, key, body);
        assert_eq!(sealed.len(), SEAL_BYTES + body.len());
        assert_eq!(fleet.open(ENTRY, key, &sealed), Some(&body[..]));
        for i in 0..sealed.len() {
            let mut changed = sealed.clone();
            changed[i] ^= 0x20;
            assert_eq!(fleet.open(ENTRY, key, &changed), None, "byte {i} changed");
        }
        assert_eq!(other.open(ENTRY, key, &sealed), None, "another key");
        assert_eq!(fleet.open(ENTRY, "edgegate:cache:zwfw.gov.test\n/permits/1\nuser-b", &sealed), None);
        assert_eq!(fleet.open(PURGE, key, &sealed), None, "an entry is not a purge");
        assert_eq!(fleet.open(ENTRY, key, &sealed[..sealed.len() - 1]), None, "cut short");
        assert_eq!(fleet.open(ENTRY, key, &sealed[..SEAL_BYTES - 1]), None, "no room for a tag");
        assert_eq!(fleet.open(ENTRY, key, body), None, "unsealed");
        // The length prefixes keep the Redis key and the bytes apart.
        let shifted = fleet.seal(ENTRY, "edgegate:cache:a", b"bc");
        assert_eq!(fleet.open(ENTRY, "edgegate:cache:ab", &[&[SEALED], &shifted[1..SEAL_BYTES], b"c"].concat()), None);
    }

    /// An entry encrypted under the fleet's key shows nothing of the answer (two copies of
    /// one answer are not even alike), and opens only under that key — or as the previous
    /// key during a rotation — at the Redis key it was stored at, for an entry, whole:
    /// whoever writes to Redis can change no byte, move no citizen's entry to another's
    /// key, and write nothing a node serves.
    #[test]
    fn an_encrypted_entry_hides_the_answer_and_opens_only_as_it_was_stored() {
        let key = |b: u8| Sealer::new(&[b; 32]).expect("key");
        let fleet = key(7);
        let at = "edgegate:cache:zwfw.gov.test\n/permits/1\n0123456789abcdef0123456789abcdef";
        let answer = b"\x01{\"citizen\":\"110105199001011234\",\"permit\":\"granted\"}";
        let stored = fleet.encrypt(ENTRY, at, answer).expect("encrypted");
        assert_eq!(stored.len(), ENCRYPTED_BYTES + answer.len());
        assert_eq!(stored.first(), Some(&ENCRYPTED));
        assert!(!stored.windows(6).any(|w| answer.windows(6).any(|a| a == w)), "no six bytes of the answer in it");
        assert_ne!(stored, fleet.encrypt(ENTRY, at, answer).expect("encrypted"), "each copy under a key of its own");
        assert_eq!(fleet.decrypt(ENTRY, at, &stored).as_deref(), Some(&answer[..]));
        assert_eq!(key(7).decrypt(ENTRY, at, &stored).as_deref(), Some(&answer[..]), "another node with the key");
        for i in 0..stored.len() {
            let mut changed = stored.clone();
            changed[i] ^= 0x20;
            assert_eq!(fleet.decrypt(ENTRY, at, &changed), None, "byte {i} changed");
        }
        assert_eq!(key(8).decrypt(ENTRY, at, &stored), None, "another key");
        assert_eq!(fleet.decrypt(ENTRY, &at.replace("/permits/1", "/permits/2"), &stored), None, "moved");
        assert_eq!(fleet.decrypt(PURGE, at, &stored), None, "an entry is not a purge");
        assert_eq!(fleet.decrypt(ENTRY, at, &stored[..stored.len() - 1]), None, "cut short");
        assert_eq!(fleet.decrypt(ENTRY, at, &stored[..ENCRYPTED_BYTES - 1]), None, "no room for a tag");
        assert_eq!(fleet.decrypt(ENTRY, at, answer), None, "not encrypted");
        assert_eq!(fleet.decrypt(ENTRY, at, &fleet.seal(ENTRY, at, answer)), None, "tagged but not encrypted");
        let empty = fleet.encrypt(ENTRY, at, b"").expect("encrypted");
        assert_eq!(fleet.decrypt(ENTRY, at, &empty), Some(Vec::new()));

        // Rotating from key 7 to key 9: the rotating node opens both, encrypts under 9 only.
        let rotating = key(9).with_previous(key(7));
        assert_eq!(rotating.decrypt(ENTRY, at, &stored).as_deref(), Some(&answer[..]), "the old key's entry");
        let from_rotating = rotating.encrypt(ENTRY, at, answer).expect("encrypted");
        assert_eq!(key(9).decrypt(ENTRY, at, &from_rotating).as_deref(), Some(&answer[..]));
        assert_eq!(fleet.decrypt(ENTRY, at, &from_rotating), None, "a node not yet rotated misses it");
        assert_eq!(key(9).decrypt(ENTRY, at, &stored), None, "the old key dropped: no longer served");
    }

    /// With the fleet's key an entry's Redis name is a MAC of its whole cache key — no host,
    /// path, query or `per_user` route's user in it — which every node with the key
    /// computes alike; while rotating, a node also looks for the name under the previous key.
    #[test]
    fn an_entrys_name_hides_its_whole_cache_key() {
        let key = |b: u8| Sealer::new(&[b; 32]).expect("key");
        let cache_key = "zwfw.gov.test\n/permits/1\nid=110105199001011234\nuser=citizen-42\naccept-encoding=gzip";
        let (name, previous) = key(1).entry_names(cache_key);
        assert_eq!(previous, None);
        let hex = name.strip_prefix("edgegate:cache:sealed:").expect("the sealed entries' prefix");
        assert_eq!(hex.len(), 32);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{hex}");
        assert_eq!(key(1).entry_names(cache_key).0, name, "every node with the key");
        assert_eq!(key(1).stored_name(cache_key).0, name, "stored where it is looked for");
        for other in [
            cache_key.replace("citizen-42", "citizen-43"),
            cache_key.replace("110105199001011234", "110105199001011235"),
            cache_key.replace("gzip", "br"),
            cache_key.replace("/permits/1", "/permits/2"),
            cache_key.replace("zwfw.gov.test", "www.gov.test"),
        ] {
            assert_ne!(key(1).entry_names(&other).0, name, "{other}");
        }
        assert_ne!(key(2).entry_names(cache_key).0, name, "another key");
        let (first, second) = key(2).with_previous(key(1)).entry_names(cache_key);
        assert_eq!((first, second), (key(2).entry_names(cache_key).0, Some(name)));
        assert_eq!(key(2).with_previous(key(1)).stored_name(cache_key).0, key(2).entry_names(cache_key).0);
    }

    /// An entry's member in the index opens, under the key that stored it, to the entry's
    /// name and its `host/path` — what a purge matches — and holds neither in the clear. A
    /// rotating node opens what either key stored; a node on another key opens nothing; a
    /// member's text put behind another entry's digest (to steer a purge at that entry or
    /// away from this one) does not open. Storing the entry again gives the same member.
    #[test]
    fn an_index_member_opens_to_its_entrys_name_and_path_under_the_fleets_key_only() {
        let key = |b: u8| Sealer::new(&[b; 32]).expect("key");
        let cache_key = "zwfw.gov.test\n/permits/1\nid=110105199001011234\nuser=citizen-42";
        let (name, member) = key(1).stored_name(cache_key);
        let member = member.expect("a member");
        for clear in [&b"zwfw"[..], b"permits", b"1101051990", b"citizen"] {
            assert!(!member.windows(clear.len()).any(|w| w == clear), "{}", String::from_utf8_lossy(clear));
        }
        let expected = Some((name.clone(), "zwfw.gov.test/permits/1".to_owned()));
        let own = key(1);
        assert_eq!(own.indexed(own.index_ciphers(), &member), expected);
        assert_eq!(key(1).stored_name(cache_key).1.as_deref(), Some(&member[..]), "one member an entry");
        let rotating = key(2).with_previous(key(1));
        assert_eq!(rotating.indexed(rotating.index_ciphers(), &member), expected, "a rotating node");
        let other = key(2);
        assert_eq!(other.indexed(other.index_ciphers(), &member), None, "another key");

        let (_, elsewhere) = key(1).stored_name("zwfw.gov.test\n/forms/7\n");
        let elsewhere = elsewhere.expect("a member");
        let mut moved = elsewhere[..16].to_vec();
        moved.extend_from_slice(&member[16..]);
        assert_eq!(own.indexed(own.index_ciphers(), &moved), None, "a member's text behind another digest");
        for i in 0..member.len() {
            let mut changed = member.clone();
            changed[i] ^= 1;
            assert_eq!(own.indexed(own.index_ciphers(), &changed), None, "byte {i} changed");
        }
        assert_eq!(own.indexed(own.index_ciphers(), &member[..member.len() - 1]), None, "cut short");
    }

    /// A counter's name under the fleet's key says nothing of the client: not its address,
    /// not which other names are its (another second, another route); every node with the
    /// key names it alike, and during a rotation's first rollout the rotated nodes name it
    /// as the others do.
    #[test]
    fn a_counters_name_under_the_key_hides_the_client_and_every_node_agrees_on_it() {
        let key = |b: u8| Sealer::new(&[b; 32]).expect("key");
        let name = |s: &Sealer, route: &str, window: u64, client: &str| s.counter_name(route, window, client);
        let fleet = key(1);
        let n = name(&fleet, "api", 1_796_619_866, "203.0.113.7");
        assert_eq!(n.len(), COUNTER_NAME_HEX);
        assert!(n.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{n}");
        assert!(!n.contains("203") && !n.contains("113"), "{n}");
        assert_eq!(n, name(&key(1), "api", 1_796_619_866, "203.0.113.7"), "another node with the key");
        for other in [
            name(&fleet, "api", 1_796_619_867, "203.0.113.7"),
            name(&fleet, "apj", 1_796_619_866, "203.0.113.7"),
            name(&fleet, "api", 1_796_619_866, "203.0.113.8"),
            name(&key(2), "api", 1_796_619_866, "203.0.113.7"),
            // The route's length is part of the MAC: a route and key never run together.
            name(&fleet, "ap", 1_796_619_866, "i203.0.113.7"),
        ] {
            assert_ne!(n, other);
        }
        // Rotating from key 1 to key 2: nodes with key 2 and key 1 as previous count with
        // the nodes that still have key 1 alone.
        assert_eq!(name(&key(2).with_previous(key(1)), "api", 1_796_619_866, "203.0.113.7"), n);
    }

    #[test]
    fn a_key_file_holds_at_least_32_bytes_less_its_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l2.key");
        std::fs::write(&path, format!("{}\n", "k".repeat(31))).expect("write");
        let refused = Sealer::load(&path).err().expect("31 bytes are too few");
        assert!(refused.contains("the key is 31 bytes; at least 32"), "{refused}");
        std::fs::write(&path, format!("{}\n", "k".repeat(32))).expect("write");
        let loaded = Sealer::load(&path).expect("32 bytes");
        let exact = Sealer::new("k".repeat(32).as_bytes()).expect("key");
        assert_eq!(loaded.seal(ENTRY, "k", b"x"), exact.seal(ENTRY, "k", b"x"), "the newline is not part of the key");
        let missing = Sealer::load(&dir.path().join("absent")).err().expect("missing");
        assert!(missing.contains("cannot read"), "{missing}");
    }
}
