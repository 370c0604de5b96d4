package ledgertest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/taglock/taglock/storage"
)

// Populate fills l with a little of everything: bindings (one a tombstone,
// one with an index closure), events of several kinds, manifests, pulls and
// a pending reservation. It returns the record counts written.
func Populate(t testing.TB, l *storage.Ledger) storage.ImportStats {
	t.Helper()
	ctx := context.Background()
	v1, v2, idx := NewBinding("app", "v1", "one"), NewBinding("app", "v2", "two"), NewBinding("base", "multi", "index")
	idx.Closure = []digest.Digest{Digest("amd64"), Digest("arm64"), Digest("layer")}
	v2.Deleted, v2.DeletedAt = true, At(30)
	MustPut(t, l, []storage.Binding{v1, v2, idx},
		storage.Event{Kind: storage.EventAdopted, Repo: "app", Tag: "v1", Digest: v1.Digest, Time: At(1), Message: "<found & adopted>"},
		storage.Event{Kind: storage.EventAdopted, Repo: "app", Tag: "v2", Digest: v2.Digest, Time: At(2)},
	)
	if err := l.Append(ctx, storage.Event{
		Kind: storage.EventRefused, Repo: "app", Tag: "v1", Digest: Digest("evil"), Previous: v1.Digest,
		User: "mallory", Rule: "releases", Reason: "immutable-tag-moved", RequestID: "r-9", Time: At(3),
	}); err != nil {
		t.Fatal(err)
	}
	r := MustReserve(t, l, storage.Reservation{Repo: "base", Tags: []string{"next"}, Digest: Digest("next")})
	if err := l.Commit(ctx, r.ID, []storage.Binding{NewBinding("base", "next", "next")},
		[]storage.Event{{Kind: storage.EventAccepted, Repo: "base", Tag: "next", Digest: Digest("next"), Time: At(4)}}); err != nil {
		t.Fatal(err)
	}
	MustReserve(t, l, storage.Reservation{
		Repo: "app", Tags: []string{"v3", "latest"}, Digest: Digest("three"),
		Closure: []digest.Digest{Digest("three/layer")}, Deadline: At(6), Owner: "replica-a",
		Expect: map[string]storage.Seen{"latest": {}},
	})
	MustReserve(t, l, storage.Reservation{Kind: storage.ReserveDelete, Repo: "app", Digest: Digest("old"), Deadline: At(7)})
	for _, m := range []storage.Manifest{
		{Repo: "base", Digest: Digest("index"), Size: 9, Children: []digest.Digest{Digest("amd64"), Digest("arm64")}},
		{Repo: "base", Digest: Digest("amd64"), Size: 7, Blobs: []digest.Digest{Digest("layer")}, Subject: Digest("x")},
	} {
		if err := l.PutManifest(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.RecordPulls(ctx, []storage.Pull{
		{Repo: "app", Digest: Digest("one"), At: At(10)},
		{Repo: "base", Digest: Digest("index"), At: At(11)},
	}); err != nil {
		t.Fatal(err)
	}
	return storage.ImportStats{Bindings: 4, Events: 4, Manifests: 2, Pulls: 2, Reservations: 2}
}

// MustExport exports l or fails the test.
func MustExport(t testing.TB, l *storage.Ledger) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := l.Export(context.Background(), &buf); err != nil {
		t.Fatalf("Export: %v", err)
	}
	return buf.Bytes()
}

func testExportImport(t *testing.T, open Opener) {
	// Export then Import into a fresh ledger reproduces the same export,
	// importing twice changes nothing, and the imported ledger carries on
	// with the same sequence and reservations.
	ctx := context.Background()
	src := open(t)
	want := Populate(t, src)
	dump := MustExport(t, src)
	for _, typ := range []string{"binding", "event", "manifest", "pull", "reservation"} {
		if !bytes.Contains(dump, []byte(`{"type":"`+typ+`",`)) {
			t.Errorf("export has no %s line:\n%s", typ, dump)
		}
	}

	dst := open(t)
	for i := range 2 {
		stats, err := dst.Import(ctx, bytes.NewReader(dump))
		if err != nil {
			t.Fatalf("Import #%d: %v", i+1, err)
		}
		equal(t, "ImportStats", stats, want)
		if got := MustExport(t, dst); !bytes.Equal(got, dump) {
			t.Fatalf("export after import #%d differs:\n got  %s\n want %s", i+1, got, dump)
		}
	}
	if problems, err := dst.Check(ctx); err != nil {
		t.Errorf("Check after Import: %v %q", err, problems)
	}
	if err := dst.Append(ctx, storage.Event{Kind: storage.EventRefused, Repo: "app"}); err != nil {
		t.Fatal(err)
	}
	if newest, err := dst.Recent(ctx, "", 1); err != nil || newest[0].Seq != uint64(want.Events)+1 {
		t.Errorf("first event after import = %+v, %v; want seq %d", newest, err, want.Events+1)
	}
	if _, err := dst.Reserve(ctx, storage.Reservation{Repo: "app", Tags: []string{"v3"}, Digest: Digest("other")}); !errors.Is(err, storage.ErrBusy) {
		t.Errorf("imported reservation does not hold its tag: err = %v", err)
	}
	if _, err := dst.Reserve(ctx, storage.Reservation{Kind: storage.ReserveDelete, Repo: "app", Digest: Digest("three/layer"), Blob: true}); !errors.Is(err, storage.ErrBusy) {
		t.Errorf("imported push reservation does not hold its closure: err = %v", err)
	}
	if _, err := dst.Reserve(ctx, storage.Reservation{Repo: "app", Tags: []string{"v9"}, Digest: Digest("old")}); !errors.Is(err, storage.ErrBusy) {
		t.Errorf("imported delete reservation does not hold its digest: err = %v", err)
	}
}

func testImportRejects(t *testing.T, open Opener) {
	// Import refuses malformed input with ErrInvalid naming the record, and
	// refuses to rewrite history.
	ctx := context.Background()
	l := open(t)
	if err := l.Append(ctx, storage.Event{Kind: storage.EventAccepted, Repo: "r", Time: At(0)}); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, input string }{
		{"not JSON", "{\"type\":\"binding\"}\nnot json\n"},
		{"unknown type", `{"type":"tag","repo":"r"}`},
		{"unknown field", `{"type":"manifest","repo":"r","digest":"` + string(Digest("m")) + `","extra":1}`},
		{"invalid binding", `{"type":"binding","repo":"r","tag":"t","digest":"sha256:x","mode":"immutable"}`},
		{"event without seq", `{"type":"event","kind":"accepted","repo":"r"}`},
		{"event rewriting history", `{"type":"event","seq":1,"kind":"refused","repo":"r","time":"2026-11-26T12:00:00Z"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := l.Import(ctx, strings.NewReader(tc.input)); !errors.Is(err, storage.ErrInvalid) {
				t.Errorf("Import: err = %v, want ErrInvalid", err)
			}
		})
	}
	if hist, err := l.Recent(ctx, "", 0); err != nil || len(hist) != 1 || hist[0].Kind != storage.EventAccepted {
		t.Errorf("history after refused imports = %+v, %v", hist, err)
	}
}

func testBackup(t *testing.T, open Opener) {
	// A hot backup opens as a ledger holding the same records.
	ctx := context.Background()
	l := open(t)
	Populate(t, l)
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
	copied, err := storage.Open(path, storage.Options{NoSync: true})
	if err != nil {
		t.Fatalf("open backup: %v", err)
	}
	defer copied.Close()
	if got, want := MustExport(t, copied), MustExport(t, l); !bytes.Equal(got, want) {
		t.Errorf("backup differs:\n got  %s\n want %s", got, want)
	}
	if problems, err := copied.Check(ctx); err != nil {
		t.Errorf("Check of backup: %v %q", err, problems)
	}
}

func testCheck(t *testing.T, open Opener) {
	// Check is clean on good data and reports each kind of deliberate
	// damage to the records and indexes.
	ctx := context.Background()
	tests := []struct {
		name   string
		damage func(tx *bolt.Tx) error
		want   string
	}{
		{"clean", nil, ""},
		{"binding index entry removed", func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("binding_refs")).Delete([]byte("base\x00" + string(Digest("arm64")) + "\x00multi"))
		}, "lacks its index entry"},
		{"stray binding index entry", func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("binding_refs")).Put([]byte("base\x00"+string(Digest("arm64"))+"\x00gone"), nil)
		}, "points at no binding"},
		{"index entry for a digest the binding lacks", func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("binding_refs")).Put([]byte("app\x00"+string(Digest("arm64"))+"\x00v1"), nil)
		}, "does not reference"},
		{"history index entry removed", func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("events_by_kind")).Delete(append([]byte("refused\x00"), 0, 0, 0, 0, 0, 0, 0, 3))
		}, "lacks its events_by_kind entry"},
		{"binding not JSON", func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("bindings")).Put([]byte("app\x00v1"), []byte("{"))
		}, "ledger is corrupt"},
		{"reservation tag entry removed", deleteFirst("reserved_tags"), "lacks its tag entry"},
		{"history entry without its event", deleteFirst("events"), "points at missing event"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := open(t)
			Populate(t, l)
			if tc.damage != nil {
				path := l.Path()
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				damageFile(t, path, tc.damage)
				var err error
				if l, err = storage.Open(path, storage.Options{NoSync: true}); err != nil {
					t.Fatal(err)
				}
				defer l.Close()
			}
			problems, err := l.Check(ctx)
			if tc.want == "" {
				if err != nil || len(problems) != 0 {
					t.Fatalf("Check on good data = %q, %v", problems, err)
				}
				return
			}
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
func deleteFirst(bucket string) func(*bolt.Tx) error {
	return func(tx *bolt.Tx) error {
		k, _ := tx.Bucket([]byte(bucket)).Cursor().First()
		if k == nil {
			return errors.New("nothing to delete in " + bucket)
		}
		return tx.Bucket([]byte(bucket)).Delete(k)
	}
}

// damageFile applies edit to the closed ledger file at path with bbolt.
func damageFile(t *testing.T, path string, edit func(*bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(edit); err != nil {
		t.Fatalf("damage ledger: %v", err)
	}
}
