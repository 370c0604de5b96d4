package bolt

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	bbolt "go.etcd.io/bbolt"
)

func openGroup(t *testing.T) (*group, *bbolt.DB) {
	t.Helper()
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "group.db"), 0o600, &bbolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if err := db.Update(func(tx *bbolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err }); err != nil {
		t.Fatal(err)
	}
	return &group{db: db}, db
}

func put(k string) func(*bbolt.Tx) error {
	return func(tx *bbolt.Tx) error { return tx.Bucket([]byte("b")).Put([]byte(k), []byte("v")) }
}

func has(t *testing.T, db *bbolt.DB, k string) bool {
	t.Helper()
	var ok bool
	if err := db.View(func(tx *bbolt.Tx) error { ok = tx.Bucket([]byte("b")).Get([]byte(k)) != nil; return nil }); err != nil {
		t.Fatal(err)
	}
	return ok
}

// holdFirst starts a write that stays inside its transaction until release
// is closed, so that the writes started meanwhile queue behind it.
func holdFirst(t *testing.T, g *group) (release chan struct{}, done <-chan error) {
	t.Helper()
	entered, release := make(chan struct{}), make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- g.update(func(tx *bbolt.Tx) error {
			close(entered)
			<-release
			return put("first")(tx)
		})
	}()
	<-entered
	return release, errc
}

// waitQueued waits until n writes are queued behind the running one.
func waitQueued(g *group, n int) {
	for {
		g.mu.Lock()
		q := len(g.pending)
		g.mu.Unlock()
		if q >= n {
			return
		}
	}
}

// Writes that arrive while a commit runs are committed together, in one
// transaction, and every one of them is stored.
func TestGroupCommitsQueuedWritesTogether(t *testing.T) {
	g, db := openGroup(t)
	release, first := holdFirst(t, g)
	const n = 16
	var mu sync.Mutex
	txs := map[*bbolt.Tx]int{}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			errs[i] = g.update(func(tx *bbolt.Tx) error {
				mu.Lock()
				txs[tx]++
				mu.Unlock()
				return put(fmt.Sprint("k", i))(tx)
			})
		})
	}
	waitQueued(g, n)
	close(release)
	wg.Wait()
	if err := <-first; err != nil {
		t.Fatalf("first write: %v", err)
	}
	for i, err := range errs {
		if err != nil {
			t.Errorf("write %d: %v", i, err)
		}
		if !has(t, db, fmt.Sprint("k", i)) {
			t.Errorf("k%d not stored", i)
		}
	}
	if len(txs) != 1 {
		t.Errorf("%d queued writes ran in %d transactions, want 1", n, len(txs))
	}
}

// When one write of a group fails, it gets its own error and nothing of it
// is stored, while the others are stored as if it had not been there.
func TestGroupFailedWriteDoesNotSinkTheOthers(t *testing.T) {
	g, db := openGroup(t)
	release, first := holdFirst(t, g)
	refused := errors.New("refused")
	var wg sync.WaitGroup
	var badErr error
	okErrs := make([]error, 4)
	for i := range okErrs {
		wg.Go(func() { okErrs[i] = g.update(put(fmt.Sprint("ok", i))) })
	}
	wg.Go(func() {
		badErr = g.update(func(tx *bbolt.Tx) error {
			if err := put("bad")(tx); err != nil {
				return err
			}
			return refused
		})
	})
	waitQueued(g, 5)
	close(release)
	wg.Wait()
	if err := <-first; err != nil {
		t.Fatalf("first write: %v", err)
	}
	if !errors.Is(badErr, refused) {
		t.Errorf("failed write returned %v, want %v", badErr, refused)
	}
	if has(t, db, "bad") {
		t.Error("the failed write's put was stored")
	}
	for i, err := range okErrs {
		if err != nil || !has(t, db, fmt.Sprint("ok", i)) {
			t.Errorf("write ok%d: err %v, stored %v; want stored", i, err, has(t, db, fmt.Sprint("ok", i)))
		}
	}
}

// A write whose verdict depends on another write of its group is judged
// again on committed data: of two writes that each refuse to run after the
// other, exactly one is stored.
func TestGroupJudgesAFailedWriteOnCommittedData(t *testing.T) {
	g, db := openGroup(t)
	release, first := holdFirst(t, g)
	claim := func(name string) func(*bbolt.Tx) error {
		return func(tx *bbolt.Tx) error {
			b := tx.Bucket([]byte("b"))
			if v := b.Get([]byte("owner")); v != nil {
				return fmt.Errorf("owned by %s", v)
			}
			return b.Put([]byte("owner"), []byte(name))
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, name := range []string{"a", "b"} {
		wg.Go(func() { errs[i] = g.update(claim(name)) })
	}
	waitQueued(g, 2)
	close(release)
	wg.Wait()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if (errs[0] == nil) == (errs[1] == nil) {
		t.Fatalf("claims returned %v and %v; want exactly one to win", errs[0], errs[1])
	}
	var owner string
	_ = db.View(func(tx *bbolt.Tx) error { owner = string(tx.Bucket([]byte("b")).Get([]byte("owner"))); return nil })
	if want := map[bool]string{true: "a", false: "b"}[errs[0] == nil]; owner != want {
		t.Errorf("owner %q, want the winner %q", owner, want)
	}
}

// A write that panics fails alone: its caller gets an error, the others of
// its group are stored, and later writes still go through.
func TestGroupSurvivesAPanickingWrite(t *testing.T) {
	g, db := openGroup(t)
	release, first := holdFirst(t, g)
	var wg sync.WaitGroup
	var panicErr, okErr error
	wg.Go(func() { panicErr = g.update(func(*bbolt.Tx) error { panic("boom") }) })
	wg.Go(func() { okErr = g.update(put("ok")) })
	waitQueued(g, 2)
	close(release)
	wg.Wait()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if panicErr == nil {
		t.Error("the panicking write returned nil")
	}
	if okErr != nil || !has(t, db, "ok") {
		t.Errorf("the other write: %v, stored %v", okErr, has(t, db, "ok"))
	}
	if err := g.update(put("later")); err != nil || !has(t, db, "later") {
		t.Errorf("a later write: %v", err)
	}
}
