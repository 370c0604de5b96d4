package bolt_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bbolt "go.etcd.io/bbolt"

	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
	"github.com/taglock/taglock/storage/ledgertest"
)

func TestBackupOpensAsTheLedger(t *testing.T) {
	// A hot backup is a ledger file: it opens with Open and holds the same
	// records.
	t.Parallel()
	ctx := context.Background()
	l := openTemp(t, bolt.Options{})
	ledgertest.Populate(t, l)
	path := filepath.Join(t.TempDir(), "backup.db")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	n, err := l.Backup(ctx, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil || n == 0 {
		t.Fatalf("Backup = %d, %v", n, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != n {
		t.Errorf("Backup reported %d bytes, file has %v (%v)", n, fi.Size(), err)
	}
	copied, err := bolt.Open(path, bolt.Options{NoSync: true})
	if err != nil {
		t.Fatalf("open backup: %v", err)
	}
	defer copied.Close()
	if got, want := ledgertest.MustExport(t, copied), ledgertest.MustExport(t, l); !bytes.Equal(got, want) {
		t.Errorf("backup differs:\n got  %s\n want %s", got, want)
	}
	if problems, err := copied.Check(ctx); err != nil {
		t.Errorf("Check of backup: %v %q", err, problems)
	}
}

func TestCheckFindsDamage(t *testing.T) {
	// Check reports each kind of deliberate damage to the file's records
	// and indexes.
	t.Parallel()
	ctx := context.Background()
	tests := []struct {
		name   string
		damage func(tx *bbolt.Tx) error
		want   string
	}{
		{"binding index entry removed", func(tx *bbolt.Tx) error {
			return tx.Bucket([]byte("binding_refs")).Delete([]byte("base\x00" + string(ledgertest.Digest("arm64")) + "\x00multi"))
		}, "lacks its index entry"},
		{"stray binding index entry", func(tx *bbolt.Tx) error {
			return tx.Bucket([]byte("binding_refs")).Put([]byte("base\x00"+string(ledgertest.Digest("arm64"))+"\x00gone"), nil)
		}, "points at no binding"},
		{"index entry for a digest the binding lacks", func(tx *bbolt.Tx) error {
			return tx.Bucket([]byte("binding_refs")).Put([]byte("app\x00"+string(ledgertest.Digest("arm64"))+"\x00v1"), nil)
		}, "does not reference"},
		{"history index entry removed", func(tx *bbolt.Tx) error {
			return tx.Bucket([]byte("events_by_kind")).Delete(append([]byte("refused\x00"), 0, 0, 0, 0, 0, 0, 0, 3))
		}, "lacks its events_by_kind entry"},
		{"binding not JSON", func(tx *bbolt.Tx) error {
			return tx.Bucket([]byte("bindings")).Put([]byte("app\x00v1"), []byte("{"))
		}, "ledger is corrupt"},
		{"reservation tag entry removed", deleteFirst("reserved_tags"), "lacks its tag entry"},
		{"counts drifted", keepCounts("stats", "total", addOne(1)), "the ledger's counts say"},
		{"repository counts drifted", keepCounts("repo_stats", "app", addOne(4)), "the counts of repository app say"},
		{"repository counts lost", func(tx *bbolt.Tx) error {
			if err := tx.Bucket([]byte("repo_stats")).Delete([]byte("base")); err != nil {
				return err
			}
			return keepCounts("stats", "total", func([]byte) {})(tx)
		}, "repository base has bindings but no counts"},
		{"history entry without its event", deleteFirst("events"), "points at missing event"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "ledger.db")
			l, err := bolt.Open(path, bolt.Options{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			ledgertest.Populate(t, l)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			damageFile(t, path, tc.damage)
			if l, err = bolt.Open(path, bolt.Options{NoSync: true}); err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			problems, err := l.Check(ctx)
			if !errors.Is(err, storage.ErrCorrupt) {
				t.Errorf("Check: err = %v, want ErrCorrupt", err)
			}
			if !strings.Contains(strings.Join(problems, "\n"), tc.want) {
				t.Errorf("Check problems %q do not mention %q", problems, tc.want)
			}
		})
	}
}

// deleteFirst returns an edit that deletes the first key of bucket.
func deleteFirst(bucket string) func(*bbolt.Tx) error {
	return func(tx *bbolt.Tx) error {
		k, _ := tx.Bucket([]byte(bucket)).Cursor().First()
		if k == nil {
			return errors.New("nothing to delete in " + bucket)
		}
		return tx.Bucket([]byte(bucket)).Delete(k)
	}
}

// damageFile applies edit to the closed ledger file at path with bbolt.
func damageFile(t *testing.T, path string, edit func(*bbolt.Tx) error) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(edit); err != nil {
		t.Fatalf("damage ledger: %v", err)
	}
}
