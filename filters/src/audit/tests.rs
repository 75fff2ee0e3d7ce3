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

/// 30 records in batches of 10, a signed checkpoint after each batch.
fn log() -> Log {
    let dir = tempfile::tempdir().expect("tempdir");
    let (private, public) = generate_key_pair().expect("key pair");
    std::fs::write(dir.path().join("key.pem"), private).expect("write key");
    std::fs::write(dir.path().join("key.pub"), public).expect("write key");
    let key = load_signing_key(&dir.path().join("key.pem")).expect("signing key");
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

fn sql(path: &std::path::Path, statement: &str) {
    rusqlite::Connection::open(path).expect("open").execute_batch(statement).expect("sql");
}

#[test]
fn a_written_log_verifies_and_survives_reopening() {
    let l = log();
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
    let l = log();
    sql(&l.path, "UPDATE records SET status = 500 WHERE seq = 17");
    let e = verify(&l.path, None).expect_err("edited");
    assert_eq!(e.seq, Some(17), "{e}");
    assert!(e.reason.contains("edited"), "{e}");
}

#[test]
fn a_deleted_middle_record_is_found() {
    let l = log();
    sql(&l.path, "DELETE FROM records WHERE seq = 12");
    let e = verify(&l.path, None).expect_err("deleted");
    assert_eq!(e.seq, Some(13), "{e}");
}

#[test]
fn a_deleted_and_renumbered_tail_is_found() {
    let l = log();
    // Delete record 12 and shift the rest down so the numbers stay contiguous.
    sql(&l.path, "DELETE FROM records WHERE seq = 12; UPDATE records SET seq = seq - 1 WHERE seq > 12;");
    let e = verify(&l.path, None).expect_err("renumbered");
    assert_eq!(e.seq, Some(12), "{e}");
}

#[test]
fn two_swapped_records_are_found() {
    let l = log();
    sql(
        &l.path,
        "UPDATE records SET seq = -1 WHERE seq = 5; UPDATE records SET seq = 5 WHERE seq = 6; \
         UPDATE records SET seq = 6 WHERE seq = -1;",
    );
    let e = verify(&l.path, None).expect_err("swapped");
    assert_eq!(e.seq, Some(5), "{e}");
}

#[test]
fn a_truncated_end_is_found_up_to_the_last_checkpoint() {
    let l = log();
    sql(&l.path, "DELETE FROM records WHERE seq > 25");
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
    // And a deletion that imitates retention without a checkpoint to anchor on fails.
    sql(&l.path, "DELETE FROM records WHERE seq <= 12; UPDATE meta SET value = 12 WHERE key = 'anchor_seq';");
    let e = verify(&l.path, None).expect_err("forged anchor");
    assert_eq!(e.seq, Some(12), "{e}");
}

#[test]
fn a_failed_append_leaves_the_chain_head_for_a_retry() {
    let l = log();
    let mut store = Store::open(&l.path, "edge-1", Durability::Full).expect("open");
    // Another writer takes record 31's number: the batch fails as a whole.
    sql(
        &l.path,
        "CREATE TRIGGER no_more BEFORE INSERT ON records WHEN NEW.seq = 32 BEGIN SELECT RAISE(FAIL, 'full'); END;",
    );
    let batch = vec![record(40), record(41)];
    assert!(store.append(&batch).is_err());
    assert_eq!(store.last_seq(), 30);
    sql(&l.path, "DROP TRIGGER no_more");
    store.append(&batch).expect("retried");
    assert_eq!(verify(&l.path, Some(&l.public)).expect("verifies").last_seq, Some(32));
}

#[test]
fn a_log_from_before_trace_ids_is_read_verified_and_continued() {
    let l = log();
    // The records table as the first logs had it: no trace_id column.
    sql(&l.path, "ALTER TABLE records DROP COLUMN trace_id;");
    let report = verify(&l.path, Some(&l.public)).expect("an old log verifies");
    assert_eq!(report.records, 30);
    let reader = Reader::open(&l.path).expect("reader");
    assert_eq!(reader.after(0, 100).expect("read").len(), 30, "a reader does not need the column");
    drop(reader);
    // The writer adds the column; old and new records chain and verify together.
    let mut store = Store::open(&l.path, "edge-1", Durability::Full).expect("reopen");
    let mut traced = record(31);
    traced.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736".into();
    store.append(&[traced]).expect("append");
    assert_eq!(verify(&l.path, Some(&l.public)).expect("verifies").last_seq, Some(31));
    let last = Reader::open(&l.path).expect("reader").after(30, 1).expect("read");
    assert_eq!(last[0].trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    // The trace id is covered by the hash like every other field.
    sql(&l.path, "UPDATE records SET trace_id = '00000000000000000000000000000001' WHERE seq = 31;");
    let err = verify(&l.path, Some(&l.public)).expect_err("an edited trace id is caught");
    assert_eq!(err.seq, Some(31), "{err}");
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
                "SELECT COUNT(*), MAX(seq), (SELECT hash FROM records ORDER BY seq DESC LIMIT 1) FROM records",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?)),
            )
            .expect("head")
    };
    assert_eq!(heads(&stepped), heads(&whole));
    assert_eq!(heads(&stepped).0, 70);
    assert_eq!(verify(&stepped, None).expect("verifies").records, 70);
}
