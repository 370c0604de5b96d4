package bolt_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
	"github.com/taglock/taglock/storage/ledgertest"
)

// mustLedgerFile writes a closed ledger of a few hundred pages and returns
// its bytes and where its data ends (the file may be longer).
func mustLedgerFile(t *testing.T) (file []byte, end int) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ledger.db")
	l, err := bolt.Open(path, bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ledgertest.Populate(t, l)
	for i := range 300 {
		b := ledgertest.NewBinding("bulk", fmt.Sprintf("v%d", i), fmt.Sprint(i))
		b.Manifest = bytes.Repeat([]byte("m"), 600)
		ledgertest.MustPut(t, l, []storage.Binding{b})
	}
	n, err := l.Backup(context.Background(), io.Discard) // a backup ends where the data does
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b, int(n)
}

// editBolt applies fn to a copy of a ledger file with bbolt itself, below
// the ledger's checks, and returns the result.
func editBolt(t *testing.T, file []byte, fn func(*bbolt.Tx) error) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "edit.db")
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestOpenRefusesDamagedFiles ensures that Open, for writing and read-only,
// refuses with ErrCorrupt every kind of damaged ledger file instead of
// panicking, crashing, or starting an empty ledger in its place: garbage,
// an empty file, files truncated anywhere short of their last commit, a
// bbolt file of some other program, and a ledger that lost a bucket or its
// schema version. The file is left as it was.
func TestOpenRefusesDamagedFiles(t *testing.T) {
	t.Parallel()
	good, end := mustLedgerFile(t)
	garbage := make([]byte, 64<<10)
	_, _ = rand.Read(garbage)
	foreign := editBolt(t, nil, func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucket([]byte("settings"))
		return err
	})
	files := map[string][]byte{
		"random bytes":                 garbage,
		"a few bytes of text":          []byte("garbage"),
		"empty file":                   {},
		"only the meta pages":          good[:8192],
		"truncated to 16 KiB":          good[:16384],
		"truncated to half":            good[:len(good)/2],
		"one page short of its data":   good[:end-4096],
		"one byte short of its data":   good[:end-1],
		"a bbolt file of another tool": foreign,
		"lost its bindings bucket":     editBolt(t, good, func(tx *bbolt.Tx) error { return tx.DeleteBucket([]byte("bindings")) }),
		"lost its reservations bucket": editBolt(t, good, func(tx *bbolt.Tx) error { return tx.DeleteBucket([]byte("reservations")) }),
		"lost its schema version": editBolt(t, good, func(tx *bbolt.Tx) error {
			return tx.Bucket([]byte("meta")).Delete([]byte("version"))
		}),
		"has buckets but no meta": editBolt(t, good, func(tx *bbolt.Tx) error { return tx.DeleteBucket([]byte("meta")) }),
	}
	for name, file := range files {
		for _, ro := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s, read-only %v", name, ro), func(t *testing.T) {
				t.Parallel()
				path := filepath.Join(t.TempDir(), "ledger.db")
				if err := os.WriteFile(path, file, 0o600); err != nil {
					t.Fatal(err)
				}
				l, err := bolt.Open(path, bolt.Options{ReadOnly: ro})
				if err == nil {
					_ = l.Close()
					t.Fatal("Open succeeded, want ErrCorrupt")
				}
				if !errors.Is(err, storage.ErrCorrupt) {
					t.Fatalf("Open: %v, want ErrCorrupt", err)
				}
				if after, _ := os.ReadFile(path); !bytes.Equal(after, file) {
					t.Errorf("the refused file changed from %d to %d bytes", len(file), len(after))
				}
			})
		}
	}
}

// TestOpenAcceptsSoundFiles ensures that the checks before bbolt opens a
// file pass what bbolt writes: a new ledger, a ledger reopened, a backup
// (which ends exactly at its last page), and a ledger whose file has grown
// past its data.
func TestOpenAcceptsSoundFiles(t *testing.T) {
	t.Parallel()
	good, end := mustLedgerFile(t)
	dir := t.TempDir()
	src, err := bolt.Open(filepath.Join(dir, "src.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ledgertest.Populate(t, src)
	var backup bytes.Buffer
	if _, err := src.Backup(context.Background(), &backup); err != nil {
		t.Fatal(err)
	}
	_ = src.Close()
	for name, file := range map[string][]byte{
		"reopened":            good,
		"cut where data ends": good[:end],
		"backup":              backup.Bytes(),
		"grown":               append(append([]byte{}, good...), make([]byte, 1<<20)...),
	} {
		path := filepath.Join(dir, name+".db")
		if err := os.WriteFile(path, file, 0o600); err != nil {
			t.Fatal(err)
		}
		l, err := bolt.Open(path, bolt.Options{})
		if err != nil {
			t.Errorf("%s: Open: %v", name, err)
			continue
		}
		if problems, err := l.Check(context.Background()); err != nil {
			t.Errorf("%s: Check: %v %q", name, err, problems)
		}
		_ = l.Close()
	}
}
