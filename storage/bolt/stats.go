package bolt

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"

	bbolt "go.etcd.io/bbolt"

	"github.com/taglock/taglock/storage"
)

// The counts Ledger.Counts answers are kept in two buckets, written by
// putBinding in the transaction that writes the binding, so a count costs
// one read whatever the size of the ledger and can never disagree with the
// bindings a transaction committed.
//
// An older taglock, or any other program, may write the file without
// keeping them. So every transaction this package commits also records its
// own bbolt transaction ID under stats/txid (see sealStats): when the file's
// last transaction is not the one recorded there, something else wrote it
// since, and the counts are not believed. A read-write Open then counts the
// bindings again, once; a read-only ledger counts them at every call.

var keyTotal, keyTxID = []byte("total"), []byte("txid")

// countsSize is the stored size of a storage.Counts: five big-endian
// uint64s.
const countsSize = 5 * 8

func encodeCounts(c storage.Counts) []byte {
	b := make([]byte, 0, countsSize)
	for _, n := range []int64{c.Repositories, c.Immutable, c.Mutable, c.Warn, c.Deleted} {
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return b
}

func decodeCounts(k, v []byte) (storage.Counts, error) {
	if len(v) != countsSize {
		return storage.Counts{}, fmt.Errorf("counts %q: value of %d bytes: %w", k, len(v), storage.ErrCorrupt)
	}
	n := func(i int) int64 { return int64(binary.BigEndian.Uint64(v[8*i:])) }
	return storage.Counts{Repositories: n(0), Immutable: n(1), Mutable: n(2), Warn: n(3), Deleted: n(4)}, nil
}

// getCounts reads the counts under k of bucket b; ok is false when there
// are none.
func getCounts(b *bbolt.Bucket, k []byte) (c storage.Counts, ok bool, err error) {
	v := b.Get(k)
	if v == nil {
		return storage.Counts{}, false, nil
	}
	c, err = decodeCounts(k, v)
	return c, err == nil, err
}

// countBinding updates the counts for b replacing old (had is false when
// b's tag had no binding). A repository is counted when its first binding
// is written; bindings are never removed, only tombstoned.
func countBinding(tx *bbolt.Tx, b, old storage.Binding, had bool) error {
	repos, stats := tx.Bucket(bucketRepoStats), tx.Bucket(bucketStats)
	rc, seen, err := getCounts(repos, []byte(b.Repo))
	if err != nil {
		return err
	}
	total, _, err := getCounts(stats, keyTotal)
	if err != nil {
		return err
	}
	if had {
		rc.Add(old, -1)
		total.Add(old, -1)
	}
	rc.Add(b, 1)
	total.Add(b, 1)
	if !seen {
		rc.Repositories = 1
		total.Repositories++
	}
	if err := repos.Put([]byte(b.Repo), encodeCounts(rc)); err != nil {
		return err
	}
	return stats.Put(keyTotal, encodeCounts(total))
}

// sealStats records tx as the last transaction that kept the counts. Every
// write transaction of this package ends with it.
func sealStats(tx *bbolt.Tx) error {
	return tx.Bucket(bucketStats).Put(keyTxID, binary.BigEndian.AppendUint64(nil, uint64(tx.ID())))
}

// statsCurrent reports whether the counts were kept by the last transaction
// committed before tx: in a read transaction, the one it reads; in a write
// transaction, the one before it.
func statsCurrent(tx *bbolt.Tx) bool {
	stats := tx.Bucket(bucketStats)
	if stats == nil || tx.Bucket(bucketRepoStats) == nil {
		return false
	}
	v := stats.Get(keyTxID)
	last := uint64(tx.ID())
	if tx.Writable() {
		last--
	}
	return len(v) == 8 && binary.BigEndian.Uint64(v) == last
}

// walkCounts counts the bindings of repo (of every repository when repo is
// "") by reading each one, and returns the total and the counts of each
// repository. A binding that does not decode is left out (Check reports
// it).
func walkCounts(tx *bbolt.Tx, repo string) (storage.Counts, map[string]*storage.Counts, error) {
	var p []byte
	if repo != "" {
		p = prefix(repo)
	}
	perRepo := map[string]*storage.Counts{}
	var cur *storage.Counts
	last := ""
	err := forPrefix(tx.Bucket(bucketBindings), p, func(k, v []byte) (bool, error) {
		parts, ok := splitKey(k, 2)
		if !ok {
			return true, nil
		}
		if cur == nil || parts[0] != last { // keys come by repository
			cur, last = &storage.Counts{Repositories: 1}, parts[0]
			perRepo[last] = cur
		}
		cur.AddJSON(v)
		return true, nil
	})
	var total storage.Counts
	for _, c := range perRepo {
		total.Repositories += c.Repositories
		total.Immutable += c.Immutable
		total.Mutable += c.Mutable
		total.Warn += c.Warn
		total.Deleted += c.Deleted
	}
	return total, perRepo, err
}

// recount replaces the counts with what walking every binding finds.
func recount(tx *bbolt.Tx) error {
	total, perRepo, err := walkCounts(tx, "")
	if err != nil {
		return fmt.Errorf("count the bindings: %w", err)
	}
	if tx.Bucket(bucketRepoStats) != nil {
		if err := tx.DeleteBucket(bucketRepoStats); err != nil {
			return err
		}
	}
	repos, err := tx.CreateBucket(bucketRepoStats)
	if err != nil {
		return err
	}
	for _, repo := range slices.Sorted(maps.Keys(perRepo)) {
		if err := repos.Put([]byte(repo), encodeCounts(*perRepo[repo])); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketStats).Put(keyTotal, encodeCounts(total))
}

// Counts implements storage.Ledger: one read of the counts the writes keep,
// or, on a read-only ledger whose file another program wrote since, a walk
// of the bindings.
func (l *Ledger) Counts(ctx context.Context, repo string) (storage.Counts, error) {
	var c storage.Counts
	err := l.view(ctx, func(tx *bbolt.Tx) error {
		if !statsCurrent(tx) {
			var err error
			c, _, err = walkCounts(tx, repo)
			return err
		}
		b, k := tx.Bucket(bucketStats), keyTotal
		if repo != "" {
			b, k = tx.Bucket(bucketRepoStats), []byte(repo)
		}
		var err error
		c, _, err = getCounts(b, k)
		return err
	})
	return c, err
}

// stats compares the counts the writes kept with those c.bindings found by
// reading every binding. Counts that another program's writes made stale
// are not compared: the next read-write Open counts them again.
func (c *checker) stats(tx *bbolt.Tx) error {
	if !statsCurrent(tx) {
		return nil
	}
	total, _, err := getCounts(tx.Bucket(bucketStats), keyTotal)
	if err != nil {
		c.report("%v", err)
	} else if total != c.walked {
		c.report("the ledger's counts say %+v, its bindings hold %+v", total, c.walked)
	}
	kept := map[string]bool{}
	err = c.each(tx, bucketRepoStats, func(k, v []byte) {
		kept[string(k)] = true
		rc, err := decodeCounts(k, v)
		switch {
		case err != nil:
			c.report("%v", err)
		case c.perRepo[string(k)] == nil:
			c.report("counts of repository %s, which has no binding", k)
		case rc != *c.perRepo[string(k)]:
			c.report("the counts of repository %s say %+v, its bindings hold %+v", k, rc, *c.perRepo[string(k)])
		}
	})
	for _, repo := range slices.Sorted(maps.Keys(c.perRepo)) {
		if !kept[repo] {
			c.report("repository %s has bindings but no counts", repo)
		}
	}
	return err
}
