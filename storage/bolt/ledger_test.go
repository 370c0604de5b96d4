package bolt_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	bbolt "go.etcd.io/bbolt"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
	"github.com/taglock/taglock/storage/ledgertest"
)

// openTemp opens a new ledger in a temporary directory and closes it when
// the test ends.
func openTemp(t testing.TB, opts bolt.Options) *bolt.Ledger {
	t.Helper()
	opts.NoSync = true
	l, err := bolt.Open(filepath.Join(t.TempDir(), "ledger", "taglock.db"), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return l
}

func TestConformance(t *testing.T) {
	// The bbolt ledger passes the backend conformance suite.
	t.Parallel()
	ledgertest.RunConformance(t, func(t *testing.T) storage.Ledger {
		return openTemp(t, bolt.Options{})
	})
}

func TestOpenCreatesPrivateFile(t *testing.T) {
	// Open creates missing parent directories and a file only its owner can
	// read, and a ledger reopens with its data.
	t.Parallel()
	path := filepath.Join(t.TempDir(), "a", "b", "taglock.db")
	l, err := bolt.Open(path, bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if l.Path() != path {
		t.Errorf("Path() = %q, want %q", l.Path(), path)
	}
	ledgertest.MustPut(t, l, []storage.Binding{ledgertest.NewBinding("r", "t", "c")})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("ledger file mode %v, want 0600", perm)
	}
	l, err = bolt.Open(path, bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := ledgertest.MustBinding(t, l, "r", "t"); got.Digest != ledgertest.Digest("c") {
		t.Errorf("after reopen the binding is %+v", got)
	}
}

func TestReadOnly(t *testing.T) {
	// A read-only ledger serves reads, shares the file with other readers,
	// refuses writes with ErrReadOnly and cannot be opened on a missing file.
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "taglock.db")
	l, err := bolt.Open(path, bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ledgertest.MustPut(t, l, []storage.Binding{ledgertest.NewBinding("r", "t", "c")})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	r1, err := bolt.Open(path, bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	r2, err := bolt.Open(path, bolt.Options{ReadOnly: true, LockTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("second reader: %v", err)
	}
	defer r2.Close()
	ledgertest.MustBinding(t, r2, "r", "t")
	if err := r1.Put(ctx, []storage.Binding{ledgertest.NewBinding("r", "u", "c")}, nil); !errors.Is(err, storage.ErrReadOnly) {
		t.Errorf("Put on a read-only ledger: err = %v, want ErrReadOnly", err)
	}
	if _, err := r1.Reserve(ctx, storage.Reservation{Repo: "r", Tags: []string{"u"}, Digest: ledgertest.Digest("c")}); !errors.Is(err, storage.ErrReadOnly) {
		t.Errorf("Reserve on a read-only ledger: err = %v, want ErrReadOnly", err)
	}
	if _, err := bolt.Open(filepath.Join(dir, "missing.db"), bolt.Options{ReadOnly: true}); err == nil {
		t.Error("read-only Open of a missing file succeeded")
	}
}

func TestOpenLocked(t *testing.T) {
	// A second Open of a ledger in use fails with ErrLocked after about
	// LockTimeout, naming the path.
	t.Parallel()
	l := openTemp(t, bolt.Options{})
	const timeout = 150 * time.Millisecond
	start := time.Now()
	_, err := bolt.Open(l.Path(), bolt.Options{LockTimeout: timeout})
	elapsed := time.Since(start)
	if !errors.Is(err, storage.ErrLocked) {
		t.Fatalf("second Open: err = %v, want ErrLocked", err)
	}
	if elapsed < timeout/2 || elapsed > timeout+time.Second {
		t.Errorf("second Open gave up after %v, want about %v", elapsed, timeout)
	}
	if msg := err.Error(); !strings.Contains(msg, l.Path()) {
		t.Errorf("error %q does not name the path", msg)
	}
	start = time.Now()
	if _, err := bolt.Open(l.Path(), bolt.Options{LockTimeout: -1}); !errors.Is(err, storage.ErrLocked) || time.Since(start) > timeout {
		t.Errorf("Open with a negative LockTimeout: err = %v after %v, want ErrLocked at once", err, time.Since(start))
	}
	if _, err := bolt.Open(l.Path(), bolt.Options{ReadOnly: true, LockTimeout: 20 * time.Millisecond}); !errors.Is(err, storage.ErrLocked) {
		t.Errorf("read-only Open of a ledger open for writing: err = %v, want ErrLocked", err)
	}
}

func TestReservationSurvivesCrash(t *testing.T) {
	// A reservation not committed before the ledger closes is pending after
	// reopening, keeps its tag busy, and Release frees it.
	t.Parallel()
	ctx := context.Background()
	clock := func() time.Time { return ledgertest.At(42) }
	path := filepath.Join(t.TempDir(), "taglock.db")
	l, err := bolt.Open(path, bolt.Options{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	r := ledgertest.MustReserve(t, l, storage.Reservation{
		Repo: "r", Tags: []string{"v1", "latest"}, Digest: ledgertest.Digest("one"),
		Expect: map[string]storage.Seen{"latest": {}},
	})
	if !r.CreatedAt.Equal(ledgertest.At(42)) {
		t.Errorf("CreatedAt = %v, want the injected clock's %v", r.CreatedAt, ledgertest.At(42))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l, err = bolt.Open(path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	pending, err := l.Reservations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(pending) != 1 || pending[0].ID != r.ID || pending[0].Digest != r.Digest || !pending[0].CreatedAt.Equal(r.CreatedAt) {
		t.Fatalf("after reopen Reservations() = %+v, want [%+v]", pending, r)
	}
	other := storage.Reservation{Repo: "r", Tags: []string{"latest"}, Digest: ledgertest.Digest("two")}
	if _, err := l.Reserve(ctx, other); !errors.Is(err, storage.ErrBusy) {
		t.Errorf("Reserve over the crashed reservation: err = %v, want ErrBusy", err)
	}
	if err := l.Release(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	if pending, err := l.Reservations(ctx); err != nil || len(pending) != 0 {
		t.Errorf("after Release Reservations() = %+v, %v; want none", pending, err)
	}
	ledgertest.MustReserve(t, l, other)
	if problems, err := l.Check(ctx); err != nil {
		t.Errorf("Check: %v %q", err, problems)
	}
}

func TestConcurrentReserve(t *testing.T) {
	// Under concurrent pushes of one tag, exactly one of many different
	// digests gets bound and the rest are refused as busy or changed, while
	// pushes of the same digest all succeed.
	t.Parallel()
	const pushers = 50
	ctx := context.Background()

	t.Run("different digests", func(t *testing.T) {
		t.Parallel()
		l := openTemp(t, bolt.Options{})
		var wg sync.WaitGroup
		errs := make([]error, pushers)
		start := make(chan struct{})
		for i := range pushers {
			wg.Go(func() {
				<-start
				d := ledgertest.Digest(fmt.Sprint("content-", i))
				r, err := l.Reserve(ctx, storage.Reservation{Repo: "r", Tags: []string{"v1"}, Digest: d})
				if err == nil {
					b := ledgertest.NewBinding("r", "v1", fmt.Sprint("content-", i))
					err = l.Commit(ctx, r.ID, []storage.Binding{b}, []storage.Event{{Kind: storage.EventAccepted, Repo: "r", Tag: "v1", Digest: d}})
				}
				errs[i] = err
			})
		}
		close(start)
		wg.Wait()
		var won []int
		for i, err := range errs {
			switch {
			case err == nil:
				won = append(won, i)
			case errors.Is(err, storage.ErrBusy), errors.Is(err, storage.ErrChanged):
			default:
				t.Errorf("pusher %d: unexpected error %v", i, err)
			}
		}
		if len(won) != 1 {
			t.Fatalf("%d pushers committed (%v), want exactly 1", len(won), won)
		}
		b := ledgertest.MustBinding(t, l, "r", "v1")
		if want := ledgertest.Digest(fmt.Sprint("content-", won[0])); b.Digest != want {
			t.Errorf("bound %s, want the winner's %s", b.Digest, want)
		}
		if hist, err := l.History(ctx, "r", "v1", 0); err != nil || len(hist) != 1 {
			t.Errorf("history = %d events, %v; want 1", len(hist), err)
		}
		if pending, err := l.Reservations(ctx); err != nil || len(pending) != 0 {
			t.Errorf("reservations left: %+v, %v", pending, err)
		}
	})

	t.Run("same digest", func(t *testing.T) {
		t.Parallel()
		l := openTemp(t, bolt.Options{})
		b := ledgertest.NewBinding("r", "v1", "same")
		var reserved, committed sync.WaitGroup
		reserved.Add(pushers)
		errs := make([]error, pushers)
		for i := range pushers {
			committed.Go(func() {
				r, err := l.Reserve(ctx, storage.Reservation{Repo: "r", Tags: []string{"v1"}, Digest: b.Digest})
				reserved.Done()
				if err != nil {
					errs[i] = err
					return
				}
				// Every push decided before any committed, as when a
				// multi-arch push or CI retries race.
				reserved.Wait()
				errs[i] = l.Commit(ctx, r.ID, []storage.Binding{b}, nil)
			})
		}
		committed.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("pusher %d: %v", i, err)
			}
		}
		if got := ledgertest.MustBinding(t, l, "r", "v1"); got.Digest != b.Digest {
			t.Errorf("bound %s, want %s", got.Digest, b.Digest)
		}
		if problems, err := l.Check(ctx); err != nil {
			t.Errorf("Check: %v %q", err, problems)
		}
	})
}

func BenchmarkReserveCommit(b *testing.B) {
	// One manifest push's ledger writes, with fsync as in production.
	l, err := bolt.Open(filepath.Join(b.TempDir(), "taglock.db"), bolt.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		tag := fmt.Sprint("v", i)
		bind := ledgertest.NewBinding("bench", tag, tag)
		r, err := l.Reserve(ctx, storage.Reservation{Repo: "bench", Tags: []string{tag}, Digest: bind.Digest})
		if err != nil {
			b.Fatal(err)
		}
		ev := storage.Event{Kind: storage.EventAccepted, Repo: "bench", Tag: tag, Digest: bind.Digest}
		if err := l.Commit(ctx, r.ID, []storage.Binding{bind}, []storage.Event{ev}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReserveCommitParallel(b *testing.B) {
	// Eight pushes at a time, as from parallel CI jobs: the writes queue
	// behind each other's fsyncs unless they are committed together.
	l, err := bolt.Open(filepath.Join(b.TempDir(), "taglock.db"), bolt.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	var next atomic.Int64
	b.SetParallelism(max(1, 8/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tag := fmt.Sprint("v", next.Add(1))
			bind := ledgertest.NewBinding("bench", tag, tag)
			r, err := l.Reserve(ctx, storage.Reservation{Repo: "bench", Tags: []string{tag}, Digest: bind.Digest})
			if err != nil {
				b.Error(err)
				return
			}
			ev := storage.Event{Kind: storage.EventAccepted, Repo: "bench", Tag: tag, Digest: bind.Digest}
			if err := l.Commit(ctx, r.ID, []storage.Binding{bind}, []storage.Event{ev}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkBinding(b *testing.B) {
	// Concurrent tag lookups, the proxy's hot path, on 10k bindings.
	l := openTemp(b, bolt.Options{})
	const n = 10000
	batch := make([]storage.Binding, 0, n)
	for i := range n {
		batch = append(batch, ledgertest.NewBinding("bench", fmt.Sprint("v", i), fmt.Sprint(i)))
	}
	ledgertest.MustPut(b, l, batch)
	ctx := context.Background()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := l.Binding(ctx, "bench", fmt.Sprint("v", i%n)); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

// Manifests given to Commit are recorded in the commit's own transaction,
// and a failed commit records none of them.
func TestCommitRecordsManifests(t *testing.T) {
	l := openTemp(t, bolt.Options{})
	ctx := context.Background()
	d := digest.FromString("index")
	child := digest.FromString("child")
	res, err := l.Reserve(ctx, storage.Reservation{Repo: "team/app", Tags: []string{"1.0.0"}, Digest: d, Expect: map[string]storage.Seen{"1.0.0": {}}})
	if err != nil {
		t.Fatal(err)
	}
	m := storage.Manifest{Repo: "team/app", Digest: d, Size: 10, Children: []digest.Digest{child}}
	b := storage.Binding{Repo: "team/app", Tag: "1.0.0", Digest: d, Mode: policy.Immutable, PushedAt: time.Now(), PushedBy: "anonymous"}
	if err := l.Commit(ctx, res.ID, []storage.Binding{b}, nil, m); err != nil {
		t.Fatal(err)
	}
	got, err := l.Manifest(ctx, "team/app", d)
	if err != nil || len(got.Children) != 1 || got.Children[0] != child {
		t.Fatalf("Manifest = %+v, %v; want the committed record", got, err)
	}
	other := storage.Manifest{Repo: "team/app", Digest: digest.FromString("other"), Size: 1}
	if err := l.Commit(ctx, res.ID, nil, nil, other); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("second commit of the same reservation: %v, want ErrNotFound", err)
	}
	if _, err := l.Manifest(ctx, "team/app", other.Digest); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a failed commit recorded its manifest: %v", err)
	}
}

func TestOpenIndexesReservationsFromBeforeTheDigestIndex(t *testing.T) {
	// A ledger written before reservations indexed their digests still
	// opens: read-only as it is, and read-write with the index added, so
	// that a push pending across the upgrade still holds its content
	// against deletes.
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "taglock.db")
	l, err := bolt.Open(path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := ledgertest.MustReserve(t, l, storage.Reservation{Repo: "r", Tags: []string{"v1"}, Digest: ledgertest.Digest("m"),
		Closure: []digest.Digest{ledgertest.Digest("layer")}})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error { return tx.DeleteBucket([]byte("reserved_digests")) }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	ro, err := bolt.Open(path, bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only Open of a ledger without the digest index: %v", err)
	}
	if problems, err := ro.Check(ctx); err != nil {
		t.Errorf("read-only Check: %v %q", err, problems)
	}
	if err := ro.Close(); err != nil {
		t.Fatal(err)
	}

	l, err = bolt.Open(path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if problems, err := l.Check(ctx); err != nil {
		t.Errorf("Check after the upgrade: %v %q", err, problems)
	}
	_, err = l.Reserve(ctx, storage.Reservation{Kind: storage.ReserveDelete, Repo: "r", Digest: ledgertest.Digest("layer"), Blob: true})
	var be *storage.BusyError
	if !errors.As(err, &be) || be.Holder.ID != r.ID {
		t.Errorf("delete of a layer the pending push uses: err = %v, want ErrBusy held by %s", err, r.ID)
	}
}
