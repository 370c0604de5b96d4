package bolt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	bbolt "go.etcd.io/bbolt"

	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/ledgertest"
)

// TestCountsOfAGroupWithAFailedWrite ensures a write that counted its
// binding and then failed takes its counts with it when its group's
// transaction is rolled back, while the writes committed with the group
// after it are counted once.
func TestCountsOfAGroupWithAFailedWrite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, err := Open(filepath.Join(t.TempDir(), "ledger.db"), Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	entered, release := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- l.update(ctx, func(tx *bbolt.Tx) error {
			close(entered)
			<-release
			return putBinding(tx, ledgertest.NewBinding("app", "first", "first"))
		})
	}()
	<-entered
	refused := errors.New("refused")
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range 3 {
		wg.Go(func() {
			errs[i] = l.Put(ctx, []storage.Binding{ledgertest.NewBinding("app", fmt.Sprint("v", i), fmt.Sprint(i))}, nil)
		})
	}
	wg.Go(func() {
		errs[3] = l.update(ctx, func(tx *bbolt.Tx) error {
			if err := putBinding(tx, ledgertest.NewBinding("other", "bad", "bad")); err != nil {
				return err
			}
			return refused
		})
	})
	waitQueued(l.writes, 4)
	close(release)
	wg.Wait()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if !errors.Is(errs[3], refused) {
		t.Errorf("the failing write returned %v, want %v", errs[3], refused)
	}
	for _, err := range errs[:3] {
		if err != nil {
			t.Error(err)
		}
	}
	ledgertest.MustCountsMatchWalk(t, l, &storage.Counts{Repositories: 1, Immutable: 4})
	if problems, err := l.Check(ctx); err != nil {
		t.Errorf("Check: %v %q", err, problems)
	}
}

// TestCountable ensures counting reads a stored binding's mode and
// tombstone flag as decoding it would, whatever its strings hold, and
// decodes what it does not recognise.
func TestCountable(t *testing.T) {
	t.Parallel()
	tricky := ledgertest.NewBinding("app", `v1"mode":"warn","deleted":true`, "tricky")
	tricky.Rule = `"mode":"mutable"`
	gone := ledgertest.NewBinding("app", "gone", "gone")
	gone.Mode, gone.Deleted, gone.DeletedAt = storage.ModeWarn, true, ledgertest.At(3)
	bare := ledgertest.NewBinding("app", "bare", "bare")
	bare.Mode, bare.Manifest, bare.Closure = storage.ModeMutable, nil, nil
	tests := []struct {
		name string
		v    []byte
		want storage.Binding
		ok   bool
	}{
		{"immutable with its manifest", mustJSON(t, ledgertest.NewBinding("app", "v1", "one")), storage.Binding{Mode: storage.ModeImmutable}, true},
		{"quotes in its strings", mustJSON(t, tricky), storage.Binding{Mode: storage.ModeImmutable}, true},
		{"a tombstone", mustJSON(t, gone), storage.Binding{Mode: storage.ModeWarn, Deleted: true}, true},
		{"no manifest, no closure", mustJSON(t, bare), storage.Binding{Mode: storage.ModeMutable}, true},
		{"spaced by hand", []byte(`{"repo": "app", "tag": "x", "mode": "warn", "deleted": true}`), storage.Binding{Mode: storage.ModeWarn, Deleted: true}, true},
		{"an unknown mode", []byte(`{"mode":"evil"}`), storage.Binding{Mode: "evil"}, true},
		{"not JSON", []byte(`{`), storage.Binding{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := countable(tc.v)
			if ok != tc.ok || got.Mode != tc.want.Mode || got.Deleted != tc.want.Deleted {
				t.Errorf("countable = %q deleted %v, %v; want %q deleted %v, %v", got.Mode, got.Deleted, ok, tc.want.Mode, tc.want.Deleted, tc.ok)
			}
		})
	}
}

func mustJSON(t *testing.T, b storage.Binding) []byte {
	t.Helper()
	v, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
