package bolt_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
	"github.com/taglock/taglock/storage/ledgertest"
)

// TestCountsSurviveACrash ensures the counts a crash leaves on disk are
// those of the bindings committed with them: a copy of the file taken while
// the ledger is open and in use, as a killed process leaves it, opens with
// counts equal to a walk of its bindings, and passes Check.
func TestCountsSurviveACrash(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	l, err := bolt.Open(filepath.Join(dir, "ledger.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ledgertest.Populate(t, l)
	latest := ledgertest.NewBinding("app", "edge", "one")
	latest.Mode = policy.Mutable
	ledgertest.MustPut(t, l, []storage.Binding{latest})
	moved := ledgertest.NewBinding("app", "edge", "two")
	moved.Mode = policy.Mutable
	r := ledgertest.MustReserve(t, l, storage.Reservation{Repo: "app", Tags: []string{"edge"}, Digest: moved.Digest,
		Expect: map[string]storage.Seen{"edge": latest.Seen()}})
	if err := l.Commit(ctx, r.ID, []storage.Binding{moved}, nil); err != nil {
		t.Fatal(err)
	}
	want, err := l.Counts(ctx, "")
	if err != nil {
		t.Fatal(err)
	}

	file, err := os.ReadFile(l.Path())
	if err != nil {
		t.Fatal(err)
	}
	crashed := filepath.Join(dir, "crashed.db")
	if err := os.WriteFile(crashed, file, 0o600); err != nil {
		t.Fatal(err)
	}
	after, err := bolt.Open(crashed, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	ledgertest.MustCountsMatchWalk(t, after, &want)
	if problems, err := after.Check(ctx); err != nil {
		t.Errorf("Check after the crash: %v %q", err, problems)
	}
}

// TestCountsAfterAnotherWriter ensures a file written by a program that
// does not keep the counts (an older taglock, bbolt's own tools) is never
// answered with stale counts: read-only, Counts walks the bindings, and
// the next read-write Open counts them again.
func TestCountsAfterAnotherWriter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ledger.db")
	l, err := bolt.Open(path, bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ledgertest.Populate(t, l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// An older taglock adds a binding and tombstones another, knowing
	// nothing of the counts.
	damageFile(t, path, func(tx *bbolt.Tx) error {
		for _, b := range []storage.Binding{ledgertest.NewBinding("newer", "v9", "nine"), tombstone(ledgertest.NewBinding("app", "v1", "one"))} {
			v, err := json.Marshal(b)
			if err != nil {
				return err
			}
			if err := tx.Bucket([]byte("bindings")).Put([]byte(b.Repo+"\x00"+b.Tag), v); err != nil {
				return err
			}
			for _, d := range b.RefDigests() {
				if err := tx.Bucket([]byte("binding_refs")).Put([]byte(b.Repo+"\x00"+string(d)+"\x00"+b.Tag), nil); err != nil {
					return err
				}
			}
		}
		return nil
	})
	want := storage.Counts{Repositories: 3, Immutable: 3, Deleted: 2}

	ro, err := bolt.Open(path, bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	ledgertest.MustCountsMatchWalk(t, ro, &want)
	if problems, err := ro.Check(ctx); err != nil {
		t.Errorf("read-only Check: %v %q", err, problems)
	}
	if err := ro.Close(); err != nil {
		t.Fatal(err)
	}

	l, err = bolt.Open(path, bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ledgertest.MustCountsMatchWalk(t, l, &want)
	ledgertest.MustPut(t, l, []storage.Binding{ledgertest.NewBinding("newer", "v10", "ten")})
	want.Immutable++
	ledgertest.MustCountsMatchWalk(t, l, &want)
	if problems, err := l.Check(ctx); err != nil {
		t.Errorf("Check: %v %q", err, problems)
	}
}

func tombstone(b storage.Binding) storage.Binding {
	b.Deleted, b.DeletedAt = true, ledgertest.At(50)
	return b
}

// keepCounts edits the counts stored under key k of bucket, as if the
// ledger had kept them, by sealing the edit's transaction as the ledger
// seals its own.
func keepCounts(bucket, k string, edit func(c []byte)) func(tx *bbolt.Tx) error {
	return func(tx *bbolt.Tx) error {
		v := append([]byte(nil), tx.Bucket([]byte(bucket)).Get([]byte(k))...)
		edit(v)
		if err := tx.Bucket([]byte(bucket)).Put([]byte(k), v); err != nil {
			return err
		}
		return tx.Bucket([]byte("stats")).Put([]byte("txid"), binary.BigEndian.AppendUint64(nil, uint64(tx.ID())))
	}
}

// addOne adds one to the count at index i of encoded counts.
func addOne(i int) func(c []byte) {
	return func(c []byte) { binary.BigEndian.PutUint64(c[8*i:], binary.BigEndian.Uint64(c[8*i:])+1) }
}
