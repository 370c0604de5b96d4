package retention

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/taglock/taglock/storage/bolt"
	"github.com/taglock/taglock/storage/etcd"
	"github.com/taglock/taglock/storage/etcd/etcdtest"
)

func TestStateFilesMoveIntoTheLedgerOnce(t *testing.T) {
	// The state files an older taglock kept under DATA/retention (an
	// interrupted run's journal, first-seen times, an owed collection)
	// are moved into the ledger's job state at the first use and renamed,
	// and a first-seen time the ledger already has wins over the file's.
	t.Parallel()
	ctx := context.Background()
	l, err := bolt.Open(filepath.Join(t.TempDir(), "ledger.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dir := t.TempDir()
	files := map[string]string{
		"apply.json":      `{"started":"2026-11-01T00:00:00Z","policy":"p","pending":[{"repo":"team/app","tag":"old","digest":"sha256:` + zeros + `"}]}`,
		"first-seen.json": `{"team/app@sha256:a":"2026-10-01T00:00:00Z","team/app@sha256:b":"2026-10-02T00:00:00Z"}`,
		"gc-owed.json":    `"2026-11-01T00:00:00Z"`,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.PutJobStates(ctx, map[string][]byte{stateSeen + "team/app@sha256:b": []byte("2026-09-01T00:00:00Z")}); err != nil {
		t.Fatal(err)
	}
	r := New(Options{Ledger: l, Dir: dir})
	pending, err := r.Pending(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(pending) != 1 || pending[0].Tag != "old" {
		t.Errorf("pending after the move = %+v, want the journal's deletion of old", pending)
	}
	seen, err := r.loadSeen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := seen["team/app@sha256:a"].Format("2006-01-02"); got != "2026-10-01" {
		t.Errorf("first seen of a = %s, want the file's 2026-10-01", got)
	}
	if got := seen["team/app@sha256:b"].Format("2006-01-02"); got != "2026-09-01" {
		t.Errorf("first seen of b = %s, want the ledger's 2026-09-01", got)
	}
	if owed, err := r.gcOwed(ctx); err != nil || !owed {
		t.Errorf("gcOwed after the move = %v, %v; want true", owed, err)
	}
	for name := range files {
		if _, err := os.Stat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("%s is still there after the move (%v)", name, err)
		}
		if _, err := os.Stat(filepath.Join(dir, name+".migrated")); err != nil {
			t.Errorf("%s.migrated: %v", name, err)
		}
	}
	// A second runner finds the state in the ledger alone.
	if pending, err := New(Options{Ledger: l, Dir: dir}).Pending(ctx); err != nil || len(pending) != 1 {
		t.Errorf("pending seen by a second runner = %+v, %v", pending, err)
	}
}

const zeros = "0000000000000000000000000000000000000000000000000000000000000000"

func TestAnotherReplicaResumesTheJournal(t *testing.T) {
	// With the ledger on etcd, the journal one replica's runner leaves
	// (it died mid-run) is what another replica's runner finds, with the
	// first-seen times: nothing of a run stays on the machine that ran it.
	t.Parallel()
	ctx := context.Background()
	c := etcdtest.Start(t, 1)
	open := func() *etcd.Ledger {
		l, err := etcd.Open(ctx, etcd.Options{Endpoints: c.Endpoints(), Prefix: "/resume/"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Close() })
		return l
	}
	a, b := New(Options{Ledger: open()}), New(Options{Ledger: open()})
	j := &journal{Policy: "p", Pending: []Deletion{{Repo: "team/app", Tag: "old", Digest: "sha256:" + zeros}}}
	if err := a.saveJournal(ctx, j); err != nil {
		t.Fatal(err)
	}
	seen := map[string]time.Time{"team/app@sha256:a": time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)}
	if err := a.saveSeen(ctx, nil, seen); err != nil {
		t.Fatal(err)
	}
	pending, err := b.Pending(ctx)
	if err != nil || len(pending) != 1 || pending[0].Tag != "old" {
		t.Fatalf("the other replica's pending deletions = %+v, %v; want the journal's", pending, err)
	}
	got, err := b.loadSeen(ctx)
	if err != nil || !got["team/app@sha256:a"].Equal(seen["team/app@sha256:a"]) {
		t.Errorf("the other replica's first-seen times = %v, %v", got, err)
	}
}
