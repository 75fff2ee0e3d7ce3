use super::record::GENESIS;
use super::store::{generate_key_pair, load_signing_key, load_verifying_key};
use super::*;

fn record(i: u64) -> Record {
    Record {
        time_ms: 1_000 + i,
        request_id: format!("req-{i}"),
        route: "permits".into(),
        method: "GET".into(),
        host: "h.test".into(),
        path: format!("/p/{i}"),
        status: 200,
        ..Record::default()
    }
}

struct Log {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    public: ed25519_dalek::VerifyingKey,
}

/// A directory holding a new key pair (`key.pem`, `key.pub`), and the private key.
fn keyed_dir() -> (tempfile::TempDir, ed25519_dalek::SigningKey) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (private, public) = generate_key_pair().expect("key pair");
    std::fs::write(dir.path().join("key.pem"), private).expect("write key");
    std::fs::write(dir.path().join("key.pub"), public).expect("write key");
    let key = load_signing_key(&dir.path().join("key.pem")).expect("signing key");
    (dir, key)
}

/// 30 records in batches of 10, a signed checkpoint after each batch.
fn log() -> Log {
    let (dir, key) = keyed_dir();
    let path = dir.path().join("audit.db");
    let mut store = Store::open(&path, "edge-1", Durability::Full).expect("open");
    for b in 0..3 {
        let batch: Vec<Record> = (0..10).map(|i| record(b * 10 + i)).collect();
        store.append(&batch).expect("append");
        store.checkpoint(Some(&key), 5_000 + b).expect("checkpoint");
    }
    let public = load_verifying_key(&dir.path().join("key.pub")).expect("public key");
    Log { _dir: dir, path, public }
}

/// A log as versions before rows of records wrote it: 30 entries (one row each, the fields
/// as one JSON array, hashed as stored), a signed checkpoint after every 10.
fn entries_log() -> Log {
    let (dir, key) = keyed_dir();
    let path = dir.path().join("audit.db");
    drop(Store::open(&path, "edge-1", Durability::Full).expect("create"));
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch("DROP TRIGGER entries_closed").expect("entries open, as before rows of records");
    let (mut prev, mut text) = (GENESIS, String::new());
    for i in 0..30u64 {
        let (r, seq) = (record(i), i + 1);
        r.fields().entry_text("edge-1", &mut text);
        let hash = super::record::entry_hash(seq, r.time_ms, text.as_bytes(), &prev);
        conn.execute(
            "INSERT INTO entries (seq, time_ms, record, hash) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![seq as i64, r.time_ms as i64, text, &hash[..]],
        )
        .expect("entry");
        if seq.is_multiple_of(10) {
            signed_checkpoint(&conn, &key, seq, &hash);
        }
        prev = hash;
    }
    let public = load_verifying_key(&dir.path().join("key.pub")).expect("public key");
    Log { _dir: dir, path, public }
}

/// A log as versions before rows with their node and config wrote it: 30 records as rows of
/// 10 in `batches` (every field in every record, the row hashed as stored by the `v3`
/// encoding), a signed checkpoint after every row.
fn batches_log() -> Log {
    let (dir, key) = keyed_dir();
    let path = dir.path().join("audit.db");
    drop(Store::open(&path, "edge-1", Durability::Full).expect("create"));
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch("DROP TRIGGER batches_closed").expect("batches open, as before rows with their node");
    let mut prev = GENESIS;
    for row in 0..3u64 {
        let mut text = String::from("[");
        for i in row * 10..row * 10 + 10 {
            if i > row * 10 {
                text.push(',');
            }
            let mut r = record(i);
            r.config = "sha256:0f".into();
            r.fields().push_row_record(i + 1, "edge-1", &mut text);
        }
        text.push(']');
        let span = super::record::Span {
            first_seq: row * 10 + 1,
            last_seq: row * 10 + 10,
            min_ms: 1_000 + row * 10,
            max_ms: 1_009 + row * 10,
        };
        let hash = super::record::row_hash(&span, text.as_bytes(), &prev);
        conn.execute(
            "INSERT INTO batches (last_seq, first_seq, min_ms, max_ms, records, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![
                span.last_seq as i64,
                span.first_seq as i64,
                span.min_ms as i64,
                span.max_ms as i64,
                text,
                &hash[..]
            ],
        )
        .expect("row");
        signed_checkpoint(&conn, &key, span.last_seq, &hash);
        prev = hash;
    }
    let public = load_verifying_key(&dir.path().join("key.pub")).expect("public key");
    Log { _dir: dir, path, public }
}

/// A checkpoint at `seq` as the writer makes them, signed by `key`, inserted by SQL.
fn signed_checkpoint(conn: &rusqlite::Connection, key: &ed25519_dalek::SigningKey, seq: u64, hash: &[u8; 32]) {
    let message = super::store::checkpoint_message("edge-1", seq, hash, 5_000 + seq);
    let signature = ed25519_dalek::Signer::sign(key, &message).to_bytes().to_vec();
    conn.execute(
        "INSERT INTO checkpoints (seq, node, hash, time_ms, signature) VALUES (?1, 'edge-1', ?2, ?3, ?4)",
        rusqlite::params![seq as i64, &hash[..], (5_000 + seq) as i64, signature],
    )
    .expect("checkpoint");
}

fn sql(path: &std::path::Path, statement: &str) {
    rusqlite::Connection::open(path).expect("open").execute_batch(statement).expect("sql");
}

#[test]
fn a_written_log_verifies_and_survives_reopening() {
    let l = log();
    let page_size = |p: &std::path::Path| -> i64 {
        rusqlite::Connection::open(p).expect("open").query_row("PRAGMA page_size", [], |r| r.get(0)).expect("pragma")
    };
    assert_eq!(page_size(&l.path), 16_384, "a new log has 16 KiB pages");
    let old = legacy_log(true);
    Store::open(&old.path, "edge-1", Durability::Full).expect("open an old log");
    assert_eq!(page_size(&old.path), 4_096, "an existing log keeps its pages");
    let report = verify(&l.path, Some(&l.public)).expect("verifies");
    assert_eq!((report.records, report.first_seq, report.last_seq), (30, Some(1), Some(30)));
    assert_eq!((report.checkpoints, report.signed_checkpoints), (3, 3));
    // The sequence goes on after a restart, chained to the last record.
    let mut store = Store::open(&l.path, "edge-1", Durability::Full).expect("reopen");
    assert_eq!(store.last_seq(), 30);
    store.append(&[record(99)]).expect("append");
    assert_eq!(verify(&l.path, Some(&l.public)).expect("verifies").last_seq, Some(31));
}

#[test]
fn an_edited_field_is_named_by_record() {
    let l = entries_log();
    sql(&l.path, "UPDATE entries SET record = json_set(record, '$[12]', 500) WHERE seq = 17");
    let e = verify(&l.path, None).expect_err("edited");
    assert_eq!(e.seq, Some(17), "{e}");
    assert!(e.reason.contains("edited"), "{e}");
}

#[test]
fn an_entry_rewritten_as_something_else_is_named_and_export_refuses_it() {
    // The stored text replaced by bytes that are not text, or by text that is not an entry.
    for (edit, seq) in [
        ("UPDATE entries SET record = x'5b22ff00' WHERE seq = 3", 3),
        ("UPDATE entries SET record = '{\"user\": \"someone\"}' WHERE seq = 8", 8),
    ] {
        let l = entries_log();
        sql(&l.path, edit);
        let e = verify(&l.path, None).expect_err("edited");
        assert_eq!(e.seq, Some(seq), "{e}");
        let read = Reader::open(&l.path).expect("reader").after(0, 100);
        let err = read.expect_err("an entry that is not one is not exported").to_string();
        assert!(err.contains(&format!("entry {seq}")), "{err}");
    }
}

#[test]
fn a_deleted_middle_record_is_found() {
    let l = entries_log();
    sql(&l.path, "DELETE FROM entries WHERE seq = 12");
    let e = verify(&l.path, None).expect_err("deleted");
    assert_eq!(e.seq, Some(13), "{e}");
}

#[test]
fn a_deleted_and_renumbered_tail_is_found() {
    let l = entries_log();
    // Delete record 12 and shift the rest down so the numbers stay contiguous.
    sql(&l.path, "DELETE FROM entries WHERE seq = 12; UPDATE entries SET seq = seq - 1 WHERE seq > 12;");
    let e = verify(&l.path, None).expect_err("renumbered");
    assert_eq!(e.seq, Some(12), "{e}");
    assert!(e.reason.contains("renumbered"), "{e}");
}

#[test]
fn two_swapped_records_are_found() {
    let l = entries_log();
    sql(
        &l.path,
        "UPDATE entries SET seq = -1 WHERE seq = 5; UPDATE entries SET seq = 5 WHERE seq = 6; \
         UPDATE entries SET seq = 6 WHERE seq = -1;",
    );
    let e = verify(&l.path, None).expect_err("swapped");
    assert_eq!(e.seq, Some(5), "{e}");
}

#[test]
fn a_truncated_end_is_found_up_to_the_last_checkpoint() {
    let l = entries_log();
    sql(&l.path, "DELETE FROM entries WHERE seq > 25");
    let e = verify(&l.path, None).expect_err("truncated");
    assert_eq!(e.seq, Some(30), "{e}");
}

#[test]
fn a_wrong_key_or_a_forged_checkpoint_fails() {
    let l = log();
    let (_, other) = generate_key_pair().expect("key pair");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("other.pub"), other).expect("write");
    let other = load_verifying_key(&dir.path().join("other.pub")).expect("key");
    let e = verify(&l.path, Some(&other)).expect_err("wrong key");
    assert!(e.reason.contains("signature"), "{e}");
    // Rewriting the whole chain from record 15 on would also need new checkpoint signatures.
    sql(&l.path, "UPDATE checkpoints SET signature = NULL WHERE seq = 20");
    let e = verify(&l.path, Some(&l.public)).expect_err("unsigned");
    assert_eq!(e.seq, Some(20), "{e}");
}

#[test]
fn retention_deletes_to_a_checkpoint_and_the_rest_still_verifies() {
    let l = log();
    let mut store = Store::open(&l.path, "edge-1", Durability::Full).expect("open");
    // Records 1..=25 are older than 1025; the newest checkpoint among them is 20.
    let deleted = store.retain(1_025, None, 1_000).expect("retain");
    assert_eq!(deleted, 20);
    let report = verify(&l.path, Some(&l.public)).expect("still verifies");
    assert_eq!((report.anchor_seq, report.first_seq, report.records), (20, Some(21), 10));
    // Not past what the forwarder has not delivered.
    let l = log();
    let mut store = Store::open(&l.path, "edge-1", Durability::Full).expect("open");
    assert_eq!(store.retain(10_000, Some(15), 1_000).expect("retain"), 10);
    // Steps shorter than the checkpoints' spacing still go on, a checkpoint at a time.
    let l = log();
    let mut store = Store::open(&l.path, "edge-1", Durability::Full).expect("open");
    assert_eq!(store.retain(10_000, None, 3).expect("retain"), 10, "to the first checkpoint past the step");
    assert_eq!(store.retain(10_000, None, 3).expect("retain"), 10, "then the next");
    assert_eq!(store.retain(1_025, None, 3).expect("retain"), 0, "not to one whose records are too new");
    assert_eq!(verify(&l.path, Some(&l.public)).expect("verifies").anchor_seq, 20);
    // And a deletion that imitates retention without a checkpoint to anchor on fails.
    sql(&l.path, "DELETE FROM entries WHERE seq <= 12; UPDATE meta SET value = 12 WHERE key = 'anchor_seq';");
    let e = verify(&l.path, None).expect_err("forged anchor");
    assert_eq!(e.seq, Some(12), "{e}");
}

#[test]
fn a_walk_from_where_the_last_ended_hashes_only_the_new_records_and_finds_their_edits() {
    let l = log();
    let whole = verify(&l.path, Some(&l.public)).expect("verifies");
    assert_eq!((whole.walked, whole.head.seq), (30, 30));
    let (dir, key) = keyed_dir();
    drop(dir);
    let mut store = Store::open(&l.path, "edge-1", Durability::Full).expect("open");
    store.append(&(40..45).map(record).collect::<Vec<_>>()).expect("append");
    // Nothing new to walk: the head is still good.
    let same = verify_after(&l.path, None, Some(whole.head), u64::MAX).expect("verifies");
    assert_eq!((same.walked, same.records, same.last_seq), (5, 35, Some(35)));
    let next = verify_after(&l.path, None, Some(same.head), u64::MAX).expect("verifies");
    assert_eq!((next.walked, next.records, next.head), (0, 35, same.head));
    // The new records are hashed, and one edited among them is named…
    store.append(&(50..55).map(record).collect::<Vec<_>>()).expect("append");
    // (Record 38, in the row of 36..=40, named by its row.)
    sql(&l.path, "UPDATE record_rows SET records = json_set(records, '$[2][7]', '/p/innocent') WHERE last_seq = 40");
    let e = verify_after(&l.path, None, Some(same.head), u64::MAX).expect_err("edited");
    assert_eq!(e.seq, Some(36), "{e}");
    // …as is the record the last walk ended at when its stored hash is rewritten…
    let l = log();
    sql(&l.path, "UPDATE record_rows SET hash = zeroblob(32) WHERE last_seq = 30");
    let e = verify_after(&l.path, None, Some(whole.head), u64::MAX).expect_err("edited head");
    assert_eq!(e.seq, Some(30), "{e}");
    assert!(e.reason.contains("edited"), "{e}");
    // …or deleted with all after it.
    let l = log();
    sql(&l.path, "DELETE FROM record_rows WHERE last_seq >= 30; DELETE FROM checkpoints WHERE seq = 30");
    let e = verify_after(&l.path, None, Some(whole.head), u64::MAX).expect_err("deleted head");
    assert_eq!(e.seq, Some(30), "{e}");
    // A new checkpoint's signature is checked, by the key given.
    let l = log();
    let mut store = Store::open(&l.path, "edge-1", Durability::Full).expect("open");
    store.append(&[record(60)]).expect("append");
    store.checkpoint(Some(&key), 6_000).expect("checkpoint by another key");
    let e = verify_after(&l.path, Some(&l.public), Some(whole.head), u64::MAX).expect_err("wrong key");
    assert_eq!(e.seq, Some(31), "{e}");
    // An edit before the point the walk goes on from is the whole walk's to find.
    let l = log();
    sql(&l.path, "UPDATE record_rows SET records = json_set(records, '$[3][7]', '/p/innocent') WHERE last_seq = 10");
    assert_eq!(verify_after(&l.path, None, Some(whole.head), u64::MAX).expect("only new records walked").walked, 0);
    assert_eq!(verify(&l.path, None).expect_err("the whole walk finds it").seq, Some(1));
}

#[test]
fn a_walk_goes_on_from_the_anchor_when_retention_deleted_past_its_starting_point() {
    let l = log();
    let head = verify(&l.path, None).expect("verifies").head;
    let at_10 = Verified { seq: 10, hash: head.hash };
    let mut store = Store::open(&l.path, "edge-1", Durability::Full).expect("open");
    assert_eq!(store.retain(1_025, None, 1_000).expect("retain"), 20);
    // Record 10 is gone, legitimately: the walk starts at the anchor (20) and walks 21..=30.
    let report = verify_after(&l.path, None, Some(at_10), u64::MAX).expect("verifies");
    assert_eq!((report.anchor_seq, report.walked, report.records), (20, 10, 10));
    // From the anchor itself, nothing to walk; a forged anchor hash is found.
    let at_anchor = Verified { seq: 20, hash: store_hash(&l.path, 20) };
    sql(&l.path, "UPDATE meta SET value = zeroblob(32) WHERE key = 'anchor_hash'");
    let e = verify_after(&l.path, None, Some(at_anchor), u64::MAX).expect_err("forged anchor");
    assert_eq!(e.seq, Some(20), "{e}");
}

/// The hash a checkpoint holds for record `seq`.
fn store_hash(path: &std::path::Path, seq: u64) -> [u8; 32] {
    let v: Vec<u8> = rusqlite::Connection::open(path)
        .expect("open")
        .query_row("SELECT hash FROM checkpoints WHERE seq = ?1", [seq as i64], |r| r.get(0))
        .expect("checkpoint");
    v.try_into().expect("32 bytes")
}

#[test]
fn a_failed_append_leaves_the_chain_head_for_a_retry() {
    let l = log();
    let mut store = Store::open(&l.path, "edge-1", Durability::Full).expect("open");
    // Another writer takes record 31's number: the batch fails as a whole.
    sql(
        &l.path,
        "CREATE TRIGGER no_more BEFORE INSERT ON record_rows WHEN NEW.last_seq = 32 BEGIN SELECT RAISE(FAIL, 'full'); \
         END;",
    );
    let batch = vec![record(40), record(41)];
    assert!(store.append(&batch).is_err());
    assert_eq!(store.last_seq(), 30);
    sql(&l.path, "DROP TRIGGER no_more");
    store.append(&batch).expect("retried");
    assert_eq!(verify(&l.path, Some(&l.public)).expect("verifies").last_seq, Some(32));
    // A commit whose row was refused can be retried as it stands, and writes the row whole.
    sql(&l.path, "CREATE TRIGGER no_more BEFORE INSERT ON record_rows BEGIN SELECT RAISE(FAIL, 'full'); END;");
    store.begin().expect("begin");
    store.insert(&batch).expect("insert");
    assert!(store.commit().is_err());
    assert!(store.commit().is_err(), "still refused");
    // (The trigger goes by the store's own connection: another cannot write while it
    // holds the transaction.)
    store.execute_batch("DROP TRIGGER no_more").expect("drop the trigger");
    store.commit().expect("retried");
    assert_eq!(verify(&l.path, Some(&l.public)).expect("verifies").last_seq, Some(34));
    let read = Reader::open(&l.path).expect("reader").after(32, 10).expect("the row reads back");
    assert_eq!(read.iter().map(|r| r.seq).collect::<Vec<_>>(), [33, 34]);
}

/// A log as the first versions wrote it: 30 records as rows of `records`, one column per
/// field (without `trace_id` when `traced` is false), hashed by the first encoding, with a
/// signed checkpoint after every 10, and no `entries` table.
fn legacy_log(traced: bool) -> Log {
    let (dir, key) = keyed_dir();
    let path = dir.path().join("audit.db");
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE records (seq INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, node TEXT NOT NULL,
             request_id TEXT NOT NULL, route TEXT NOT NULL, client_ip TEXT NOT NULL, user TEXT NOT NULL,
             method TEXT NOT NULL, host TEXT NOT NULL, path TEXT NOT NULL, query TEXT NOT NULL,
             outcome TEXT NOT NULL, rule TEXT NOT NULL, config TEXT NOT NULL, status INTEGER NOT NULL,
             bytes INTEGER NOT NULL, duration_us INTEGER NOT NULL, upstream TEXT NOT NULL, cache TEXT NOT NULL,
             prev_hash BLOB NOT NULL, hash BLOB NOT NULL{});
         CREATE TABLE checkpoints (seq INTEGER PRIMARY KEY, node TEXT NOT NULL, hash BLOB NOT NULL,
             time_ms INTEGER NOT NULL, signature BLOB);
         CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);",
        if traced { ", trace_id TEXT NOT NULL DEFAULT ''" } else { "" }
    ))
    .expect("old schema");
    let (mut prev, mut scratch) = (GENESIS, Vec::new());
    for i in 0..30u64 {
        let mut r = record(i);
        (r.seq, r.node, r.user) = (i + 1, "edge-1".into(), format!("citizen-{i}"));
        let hash = r.chain_hash(&prev, &mut scratch);
        conn.execute(
            "INSERT INTO records (seq, time_ms, node, request_id, route, client_ip, user, method, host, path, query, \
             outcome, rule, config, status, bytes, duration_us, upstream, cache, prev_hash, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, '', ?6, ?7, ?8, ?9, '', '', '', '', ?10, 0, 0, '', '', ?11, ?12)",
            rusqlite::params![
                r.seq as i64,
                r.time_ms as i64,
                r.node,
                r.request_id,
                r.route,
                r.user,
                r.method,
                r.host,
                r.path,
                r.status,
                &prev[..],
                &hash[..]
            ],
        )
        .expect("old row");
        if r.seq.is_multiple_of(10) {
            signed_checkpoint(&conn, &key, r.seq, &hash);
        }
        prev = hash;
    }
    let public = load_verifying_key(&dir.path().join("key.pub")).expect("public key");
    Log { _dir: dir, path, public }
}

#[test]
fn a_log_from_before_entries_is_read_verified_and_continued() {
    for traced in [false, true] {
        let l = legacy_log(traced);
        let schema = || -> Vec<String> {
            let conn = rusqlite::Connection::open(&l.path).expect("open");
            let mut stmt = conn.prepare("SELECT name FROM sqlite_master ORDER BY name").expect("schema");
            stmt.query_map([], |r| r.get(0)).expect("schema").collect::<Result<_, _>>().expect("schema")
        };
        let before = schema();
        let report = verify(&l.path, Some(&l.public)).expect("an old log verifies");
        assert_eq!((report.records, report.signed_checkpoints), (30, 3));
        let reader = Reader::open(&l.path).expect("reader");
        let old = reader.after(0, 100).expect("read");
        assert_eq!(old.len(), 30, "a reader does not need the trace_id column");
        assert_eq!((old[6].seq, old[6].user.as_str(), old[6].path.as_str()), (7, "citizen-6", "/p/6"));
        assert_eq!(reader.head().expect("head"), Some((30, 1_029)));
        assert_eq!(reader.time_after(28).expect("time"), Some(1_028));
        let mut since = 0;
        reader.since(1_020, |_| since += 1).expect("since");
        assert_eq!(since, 10);
        drop(reader);
        assert_eq!(schema(), before, "reading and verifying leave an old log as it was");
        // The writer goes on with rows of records, chained to the last old row; old and new
        // verify together.
        let mut store = Store::open(&l.path, "edge-1", Durability::Full).expect("reopen");
        assert_eq!(store.last_seq(), 30);
        let mut traced_record = record(31);
        traced_record.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736".into();
        store.append(&[traced_record, record(32)]).expect("append");
        let key = load_signing_key(&l._dir.path().join("key.pem")).expect("key");
        store.checkpoint(Some(&key), 9_000).expect("checkpoint");
        assert_eq!(verify(&l.path, Some(&l.public)).expect("verifies").last_seq, Some(32));
        // Walked in parts of 7 records, each from where the last stopped, across both tables.
        let (mut at, mut parts, mut signed) = (None, Vec::new(), 0);
        loop {
            let part = verify_after(&l.path, Some(&l.public), at, 7).expect("a part verifies");
            parts.push((part.walked, part.head.seq, part.complete));
            assert_eq!(part.checkpoints, part.signed_checkpoints);
            signed += part.signed_checkpoints;
            at = Some(part.head);
            if part.complete {
                break;
            }
        }
        assert_eq!(parts, [(7, 7, false), (7, 14, false), (7, 21, false), (7, 28, false), (4, 32, true)]);
        assert_eq!(signed, 4, "each checkpoint counted once, by the part that reached it");
        let mut rests = 0;
        let whole = verify_in_parts(&l.path, Some(&l.public), None, 7, || {
            rests += 1;
            true
        })
        .expect("verifies in parts");
        assert_eq!((whole.walked, whole.signed_checkpoints, whole.complete, rests), (32, 4, true, 4));
        let stopped = verify_in_parts(&l.path, None, None, 7, || false).expect("verifies");
        assert_eq!((stopped.walked, stopped.head.seq, stopped.complete), (7, 7, false));
        assert_eq!(at, Some(verify(&l.path, None).expect("verifies").head), "the parts end where one walk does");
        // A record edited in a part not yet walked is found when its part is.
        sql(&l.path, "UPDATE records SET path = '/p/innocent' WHERE seq = 23");
        let part = verify_after(&l.path, None, None, 14).expect("records 1..=14 still verify");
        let e = verify_after(&l.path, None, Some(part.head), 14).expect_err("edited");
        assert_eq!(e.seq, Some(23), "{e}");
        sql(&l.path, "UPDATE records SET path = '/p/22' WHERE seq = 23");
        let reader = Reader::open(&l.path).expect("reader");
        // Read across the two tables, in order.
        let across = reader.after(28, 3).expect("read");
        assert_eq!(across.iter().map(|r| r.seq).collect::<Vec<_>>(), [29, 30, 31]);
        assert_eq!(across[2].trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(reader.head().expect("head"), Some((32, 1_032)));
        assert_eq!(reader.time_after(30).expect("time"), Some(1_031));
        let mut since = Vec::new();
        reader.since(1_029, |r| since.push(r.seq)).expect("since");
        assert_eq!(since, [30, 31, 32]);
        drop(reader);
        // SQL sees every record, whichever table holds it, one column per field.
        let conn = rusqlite::Connection::open(&l.path).expect("open");
        let rows: Vec<(i64, String, i64, String)> = conn
            .prepare("SELECT seq, path, status, trace_id FROM audit_records WHERE seq >= 30 ORDER BY seq")
            .expect("view")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            rows,
            [
                (30, "/p/29".to_owned(), 200, String::new()),
                (31, "/p/31".to_owned(), 200, "4bf92f3577b34da6a3ce929d0e0e4736".to_owned()),
                (32, "/p/32".to_owned(), 200, String::new()),
            ]
        );
        drop(conn);
        // An edit in either table is found: the trace id is covered like every other field.
        sql(
            &l.path,
            "UPDATE record_rows SET records = json_set(records, '$[0][16]', '00000000000000000000000000000001') \
             WHERE last_seq = 32;",
        );
        let err = verify(&l.path, Some(&l.public)).expect_err("an edited trace id is caught");
        assert_eq!(err.seq, Some(31), "{err}");
        sql(&l.path, "UPDATE records SET user = 'someone-else' WHERE seq = 12;");
        let err = verify(&l.path, Some(&l.public)).expect_err("an edited old row is caught");
        assert_eq!(err.seq, Some(12), "{err}");
    }
}

#[test]
fn retention_deletes_across_old_rows_and_rows_of_records() {
    let l = legacy_log(true);
    let mut store = Store::open(&l.path, "edge-1", Durability::Full).expect("open");
    let batch: Vec<Record> = (30..45).map(record).collect();
    store.append(&batch).expect("append");
    let key = load_signing_key(&l._dir.path().join("key.pem")).expect("key");
    store.checkpoint(Some(&key), 9_000).expect("checkpoint");
    // Records 1..=45 finished before 1_045; the newest checkpoint is 45, the last entry.
    assert_eq!(store.retain(1_040, None, 1_000).expect("retain"), 30, "to the old rows' checkpoint at 30");
    assert_eq!(store.retain(1_045, None, 1_000).expect("retain"), 15, "then the row of 31..=45");
    let report = verify(&l.path, Some(&l.public)).expect("verifies");
    assert_eq!((report.anchor_seq, report.records), (45, 0));
    store.append(&[record(46)]).expect("append after retention");
    assert_eq!(verify(&l.path, Some(&l.public)).expect("verifies").last_seq, Some(46));
}

#[test]
fn an_entry_holds_any_text_and_sql_reads_it_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    let mut store = Store::open(&path, "edge-\"1\"", Durability::Normal).expect("open");
    let mut hostile = record(1);
    hostile.user = "a\"b\\c\u{1}\n\t\u{7f}é漢字\"]".into();
    hostile.path = "/p/\\\"],[\"x".into();
    hostile.query = "q=REDACTED&\u{0}".into();
    store.append(&[hostile.clone(), record(2)]).expect("append");
    let read = Reader::open(&path).expect("reader").after(0, 10).expect("read");
    hostile.seq = 1;
    hostile.node = "edge-\"1\"".into();
    assert_eq!(read[0], hostile, "every field read back as written");
    assert_eq!(read[1].path, "/p/2");
    let conn = rusqlite::Connection::open(&path).expect("open");
    let (user, path_column, node): (String, String, String) = conn
        .query_row("SELECT user, path, node FROM audit_records WHERE seq = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("view");
    assert_eq!((user, path_column, node), (hostile.user.clone(), hostile.path.clone(), hostile.node.clone()));
    drop(conn);
    assert_eq!(verify(&path, None).expect("verifies").records, 2);
}

#[test]
fn a_batch_inserted_in_steps_is_the_same_chain_and_a_rollback_leaves_no_trace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (stepped, whole) = (dir.path().join("stepped.db"), dir.path().join("whole.db"));
    let batch = || (0..70).map(record).collect::<Vec<Record>>();
    let mut store = Store::open(&stepped, "edge-1", Durability::Normal).expect("open");
    store.manual_wal_checkpoints().expect("pragma");
    // A transaction abandoned halfway: nothing of it is kept, and the head has not moved.
    store.begin().expect("begin");
    store.insert(&batch()[..10]).expect("insert");
    store.rollback();
    assert_eq!(store.last_seq(), 0);
    // The same 70 records in steps of 32 (as the gateway's writers take turns).
    let records = batch();
    store.begin().expect("begin");
    for chunk in records.chunks(32) {
        store.insert(chunk).expect("insert");
        assert_eq!(store.last_seq(), 0, "the head moves only on commit");
    }
    store.commit().expect("commit");
    assert_eq!(store.last_seq(), 70);
    store.wal_checkpoint().expect("checkpoint");
    Store::open(&whole, "edge-1", Durability::Normal).expect("open").append(&batch()).expect("append");
    let heads = |p: &std::path::Path| {
        rusqlite::Connection::open(p)
            .expect("open")
            .query_row(
                "SELECT SUM(last_seq - first_seq + 1), MAX(last_seq), \
                 (SELECT hash FROM record_rows ORDER BY last_seq DESC LIMIT 1) FROM record_rows",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?)),
            )
            .expect("head")
    };
    assert_eq!(heads(&stepped), heads(&whole));
    assert_eq!(heads(&stepped).0, 70);
    assert_eq!(verify(&stepped, None).expect("verifies").records, 70);
}

// A checkpoint due by count is written in the batch's own transaction, at the batch's last
// record, signed, and only once that many records follow the last one: batches of 4 with a
// checkpoint every 10 records get them at 12 and 24, and the log verifies with the key. A
// checkpoint over records another commit wrote (the head before this batch) would not
// match the hash of record 12; one written out of the transaction would still be counted.
#[test]
fn a_checkpoint_due_by_count_commits_with_its_batch() {
    let (dir, key) = keyed_dir();
    let path = dir.path().join("audit.db");
    let mut store = Store::open(&path, "edge-1", Durability::Full).expect("open");
    for b in 0..6 {
        let batch: Vec<Record> = (0..4).map(|i| record(b * 4 + i)).collect();
        store.begin().expect("begin");
        store.insert(&batch).expect("insert");
        store.commit_with_checkpoint(Some(&key), 5_000 + b, 10).expect("commit");
    }
    let seqs: Vec<i64> = rusqlite::Connection::open(&path)
        .expect("open")
        .prepare("SELECT seq FROM checkpoints ORDER BY seq")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(seqs, vec![12, 24]);
    assert_eq!(store.since_checkpoint(), 0);
    let row_hash: Vec<u8> = rusqlite::Connection::open(&path)
        .expect("open")
        .query_row("SELECT hash FROM record_rows WHERE last_seq = 12", [], |r| r.get(0))
        .expect("the row of 9..=12");
    assert_eq!(store_hash(&path, 12).to_vec(), row_hash, "the checkpoint covers the batch's last record");
    let public = load_verifying_key(&dir.path().join("key.pub")).expect("public key");
    let report = verify(&path, Some(&public)).expect("verifies");
    assert_eq!((report.records, report.checkpoints, report.signed_checkpoints), (24, 2, 2));
}

/// Edits of a row of records: each is found, and named by the row (the hash covers the row
/// as a whole, so the verifier cannot tell which of its records was changed). The same edits
/// of rows as this version writes them (`record_rows`, with their node and config) and of
/// rows as the version before wrote them (`batches`).
#[test]
fn an_edit_anywhere_in_a_row_is_found_and_named_by_the_row() {
    // Each format's table and the index of a record's status in its array.
    for (table, status, fixture) in [("record_rows", 11, log as fn() -> Log), ("batches", 14, batches_log)] {
        let mut edits = vec![
            // A field of record 17 (its status), in the row of 11..=20.
            (
                format!("UPDATE {table} SET records = json_set(records, '$[6][{status}]', 500) WHERE last_seq = 20"),
                11,
                "11..=20",
            ),
            // Record 15 taken out of its row.
            (format!("UPDATE {table} SET records = json_remove(records, '$[4]') WHERE last_seq = 20"), 11, "edited"),
            // Two records of a row swapped.
            (
                format!(
                    "UPDATE {table} SET records = json_set(records, '$[1]', json(json_extract(records, '$[2]')), \
                     '$[2]', json(json_extract(records, '$[1]'))) WHERE last_seq = 10"
                ),
                1,
                "edited",
            ),
            // The span's times, which retention and export by time go by.
            (format!("UPDATE {table} SET max_ms = max_ms + 100000 WHERE last_seq = 20"), 11, "edited"),
            // Bytes that are not text, and text that holds no records.
            (format!("UPDATE {table} SET records = x'5b22ff00' WHERE last_seq = 10"), 1, "not text"),
            (format!("UPDATE {table} SET records = '[]' WHERE last_seq = 30"), 21, "edited"),
            // A row renumbered, and a row deleted.
            (format!("UPDATE {table} SET first_seq = 12 WHERE last_seq = 20"), 12, "expected record 11"),
            (format!("DELETE FROM {table} WHERE last_seq = 20"), 21, "expected record 11"),
            // The last row deleted: the checkpoint at 30 says it was written.
            (format!("DELETE FROM {table} WHERE last_seq = 30"), 30, "deleted from the end"),
            // A checkpoint inside a row, which the writer never makes.
            (
                "INSERT INTO checkpoints (seq, node, hash, time_ms) SELECT 15, node, hash, time_ms FROM checkpoints \
                 WHERE seq = 10"
                    .to_owned(),
                15,
                "inside the row of records 11..=20",
            ),
        ];
        if table == "record_rows" {
            // What the row says once for all its records: their node and their config.
            edits.extend([
                ("UPDATE record_rows SET node = 'edge-2' WHERE last_seq = 20".to_owned(), 11, "edited"),
                ("UPDATE record_rows SET config = 'sha256:00' WHERE last_seq = 30".to_owned(), 21, "edited"),
                ("UPDATE record_rows SET config = x'ff' WHERE last_seq = 10".to_owned(), 1, "config is not"),
            ]);
        }
        for (edit, seq, says) in &edits {
            let l = fixture();
            sql(&l.path, edit);
            let e = verify(&l.path, None).expect_err(edit);
            assert_eq!(e.seq, Some(*seq), "{edit}: {e}");
            assert!(e.to_string().contains(says), "{edit}: {e}");
        }
        // A reader refuses a row that does not hold the records its span names.
        let l = fixture();
        sql(&l.path, &format!("UPDATE {table} SET records = '[]' WHERE last_seq = 30"));
        let reader = Reader::open(&l.path).expect("reader");
        assert_eq!(reader.after(0, 20).expect("the first two rows read").len(), 20);
        let err = reader.after(0, 100).expect_err("the edited row is not exported").to_string();
        assert!(err.contains("row of records 21..=30") && err.contains("does not hold"), "{table}: {err}");
    }
}

#[test]
fn a_long_transaction_is_written_as_rows_of_at_most_128_records_and_read_across_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    let mut store = Store::open(&path, "edge-1", Durability::Normal).expect("open");
    store.append(&(0..1_100).map(record).collect::<Vec<_>>()).expect("append");
    let conn = rusqlite::Connection::open(&path).expect("open");
    let rows: Vec<(i64, i64)> = conn
        .prepare("SELECT first_seq, last_seq FROM record_rows ORDER BY last_seq")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let full = (0..8).map(|i| (i * 128 + 1, i * 128 + 128));
    assert_eq!(rows, full.chain([(1_025, 1_100)]).collect::<Vec<_>>());
    assert_eq!(verify(&path, None).expect("verifies").records, 1_100);
    // Record `seq` is `record(seq - 1)`: finished at 999 + seq.
    let reader = Reader::open(&path).expect("reader");
    let across = reader.after(500, 20).expect("read");
    assert_eq!(across.iter().map(|r| r.seq).collect::<Vec<_>>(), (501..=520).collect::<Vec<_>>());
    assert_eq!((across[12].seq, across[12].path.as_str(), across[12].node.as_str()), (513, "/p/512", "edge-1"));
    assert_eq!(reader.time_after(1_024).expect("time"), Some(2_024));
    assert_eq!(reader.head().expect("head"), Some((1_100, 2_099)));
    let mut since = Vec::new();
    reader.since(2_090, |r| since.push(r.seq)).expect("since");
    assert_eq!(since, (1_091..=1_100).collect::<Vec<_>>());
    // SQL sees every record of every row, one column per field.
    let (count, first, last, path_513): (i64, i64, i64, String) = conn
        .query_row(
            "SELECT COUNT(*), MIN(seq), MAX(seq), (SELECT path FROM audit_records WHERE seq = 513) FROM audit_records",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .expect("view");
    assert_eq!((count, first, last, path_513.as_str()), (1_100, 1, 1_100, "/p/512"));
}

#[test]
fn a_log_of_entries_is_continued_with_rows_of_records() {
    let l = entries_log();
    let mut store = Store::open(&l.path, "edge-1", Durability::Full).expect("reopen");
    assert_eq!(store.last_seq(), 30);
    store.append(&(30..35).map(record).collect::<Vec<_>>()).expect("append");
    let key = load_signing_key(&l._dir.path().join("key.pem")).expect("key");
    store.checkpoint(Some(&key), 9_000).expect("checkpoint");
    let report = verify(&l.path, Some(&l.public)).expect("entries and rows verify as one chain");
    assert_eq!((report.records, report.signed_checkpoints), (35, 4));
    let reader = Reader::open(&l.path).expect("reader");
    let across = reader.after(27, 6).expect("read");
    assert_eq!(across.iter().map(|r| r.seq).collect::<Vec<_>>(), [28, 29, 30, 31, 32, 33]);
    assert_eq!((across[3].path.as_str(), across[3].node.as_str()), ("/p/30", "edge-1"));
    // Walked in parts that end inside the entries and go on into the rows.
    let part = verify_after(&l.path, None, None, 28).expect("a part");
    assert_eq!((part.walked, part.head.seq, part.complete), (28, 28, false));
    let rest = verify_after(&l.path, None, Some(part.head), 28).expect("the rest");
    assert_eq!((rest.walked, rest.head.seq, rest.complete), (7, 35, true));
    // A version from before rows of records cannot chain entries onto the log any more.
    let conn = rusqlite::Connection::open(&l.path).expect("open");
    let err = conn
        .execute("INSERT INTO entries (seq, time_ms, record, hash) VALUES (36, 0, '[]', x'00')", [])
        .expect_err("entries are closed");
    assert!(err.to_string().contains("an older one cannot continue it"), "{err}");
    drop(conn);
    // Retention takes the entries and the row up to its checkpoint.
    assert_eq!(store.retain(2_000, None, 1_000).expect("retain"), 35);
    assert_eq!(verify(&l.path, Some(&l.public)).expect("verifies").anchor_seq, 35);
}

#[test]
fn a_walk_in_parts_ends_each_part_at_a_rows_end() {
    // Rows of 10 records: a part of 5 walks the first row whole and stops at its end.
    let l = log();
    let part = verify_after(&l.path, None, None, 5).expect("a part");
    assert_eq!((part.walked, part.head.seq, part.complete), (10, 10, false));
    let next = verify_after(&l.path, None, Some(part.head), 5).expect("the next part");
    assert_eq!((next.walked, next.head.seq, next.complete), (10, 20, false));
    let whole = verify_in_parts(&l.path, Some(&l.public), None, 5, || true).expect("verifies in parts");
    assert_eq!((whole.walked, whole.signed_checkpoints, whole.complete), (30, 3, true));
}

#[test]
fn a_log_of_rows_of_records_is_continued_with_rows_with_their_node_and_config() {
    let l = batches_log();
    let mut store = Store::open(&l.path, "edge-1", Durability::Full).expect("reopen");
    assert_eq!(store.last_seq(), 30);
    let newer: Vec<Record> = (30..35)
        .map(|i| {
            let mut r = record(i);
            r.config = "sha256:1e".into();
            r
        })
        .collect();
    store.append(&newer).expect("append");
    let key = load_signing_key(&l._dir.path().join("key.pem")).expect("key");
    store.checkpoint(Some(&key), 9_000).expect("checkpoint");
    let report = verify(&l.path, Some(&l.public)).expect("both kinds of rows verify as one chain");
    assert_eq!((report.records, report.signed_checkpoints), (35, 4));
    // Read across the two tables, in order, each record with its node and config.
    let reader = Reader::open(&l.path).expect("reader");
    let across = reader.after(27, 6).expect("read");
    assert_eq!(across.iter().map(|r| r.seq).collect::<Vec<_>>(), [28, 29, 30, 31, 32, 33]);
    let seen = |r: &Record| (r.path.clone(), r.node.clone(), r.config.clone(), r.time_ms);
    assert_eq!(seen(&across[2]), ("/p/29".into(), "edge-1".into(), "sha256:0f".into(), 1_029));
    assert_eq!(seen(&across[3]), ("/p/30".into(), "edge-1".into(), "sha256:1e".into(), 1_030));
    assert_eq!(reader.head().expect("head"), Some((35, 1_034)));
    let mut since = Vec::new();
    reader.since(1_029, |r| since.push(r.seq)).expect("since");
    assert_eq!(since, [30, 31, 32, 33, 34, 35]);
    drop(reader);
    // SQL sees both kinds of rows, one column per field.
    let conn = rusqlite::Connection::open(&l.path).expect("open");
    let rows: Vec<(i64, i64, String, String, String)> = conn
        .prepare("SELECT seq, time_ms, node, path, config FROM audit_records WHERE seq BETWEEN 30 AND 31 ORDER BY seq")
        .expect("view")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(
        rows,
        [
            (30, 1_029, "edge-1".into(), "/p/29".into(), "sha256:0f".into()),
            (31, 1_030, "edge-1".into(), "/p/30".into(), "sha256:1e".into())
        ]
    );
    // A version from before rows with their node and config cannot chain rows onto the log.
    let err = conn
        .execute("INSERT INTO batches (last_seq, first_seq, min_ms, max_ms, records, hash) VALUES (36, 36, 0, 0, '[]', x'00')", [])
        .expect_err("batches are closed");
    assert!(err.to_string().contains("an older one cannot continue it"), "{err}");
    drop(conn);
    // Walked in parts that end inside the older rows and go on into the newer.
    let part = verify_after(&l.path, None, None, 25).expect("a part");
    assert_eq!((part.walked, part.head.seq, part.complete), (30, 30, false));
    let rest = verify_after(&l.path, None, Some(part.head), 25).expect("the rest");
    assert_eq!((rest.walked, rest.head.seq, rest.complete), (5, 35, true));
    // Retention takes the older rows, then the newer, each up to a checkpoint.
    assert_eq!(store.retain(1_031, None, 1_000).expect("retain"), 30);
    assert_eq!(store.retain(2_000, None, 1_000).expect("retain"), 5);
    assert_eq!(verify(&l.path, Some(&l.public)).expect("verifies").anchor_seq, 35);
}

#[test]
fn a_row_names_one_config_and_a_reload_between_records_starts_the_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    let mut store = Store::open(&path, "edge-1", Durability::Normal).expect("open");
    let configs = ["sha256:aa", "sha256:aa", "sha256:bb", "sha256:bb", "sha256:aa"];
    let batch: Vec<Record> = configs
        .iter()
        .zip(0..)
        .map(|(config, i)| {
            let mut r = record(i);
            r.config = (*config).into();
            r
        })
        .collect();
    store.append(&batch).expect("append");
    let conn = rusqlite::Connection::open(&path).expect("open");
    let rows: Vec<(i64, i64, String, String)> = conn
        .prepare("SELECT first_seq, last_seq, node, config FROM record_rows ORDER BY last_seq")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let row = |first, last, config: &str| (first, last, "edge-1".to_owned(), config.to_owned());
    assert_eq!(rows, [row(1, 2, "sha256:aa"), row(3, 4, "sha256:bb"), row(5, 5, "sha256:aa")]);
    // Every record reads back with the config that served it, by the reader and by SQL.
    let read = Reader::open(&path).expect("reader").after(0, 10).expect("read");
    assert_eq!(read.iter().map(|r| r.config.as_str()).collect::<Vec<_>>(), configs);
    let by_sql: Vec<String> = conn
        .prepare("SELECT config FROM audit_records ORDER BY seq")
        .expect("view")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(by_sql, configs);
    assert_eq!(verify(&path, None).expect("verifies").records, 5);
}
