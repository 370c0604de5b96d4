package bolt

import (
	"context"
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
			return l.putBinding(tx, ledgertest.NewBinding("app", "first", "first"))
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
			if err := l.putBinding(tx, ledgertest.NewBinding("other", "bad", "bad")); err != nil {
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
