package etcdtest

import (
	"fmt"
	"os"
	"sync"
	"testing"
)

// MainT is enough of a testing.TB for TestMain to start a cluster with
// Start before any test runs: Fatal records the failure (check Failed),
// and Cleanup functions run at Close.
type MainT struct {
	testing.TB
	cleanups []func()
	failed   error
	dir      string
}

// Helper does nothing.
func (*MainT) Helper() {}

// Fatal records the failure and stops the calling goroutine's work by
// panicking; Start recovers nothing, so call it via MainT.Start.
func (m *MainT) Fatal(args ...any) { m.failed = fmt.Errorf("%s", fmt.Sprint(args...)); panic(m) }

// Cleanup registers f to run at Close.
func (m *MainT) Cleanup(f func()) { m.cleanups = append(m.cleanups, f) }

// TempDir returns a directory removed at Close.
func (m *MainT) TempDir() string {
	if m.dir == "" {
		d, err := os.MkdirTemp("", "etcdtest-")
		if err != nil {
			m.Fatal(err)
		}
		m.dir = d
	}
	d, err := os.MkdirTemp(m.dir, "t")
	if err != nil {
		m.Fatal(err)
	}
	return d
}

// Close runs the cleanups, last first, and removes the temporary
// directories.
func (m *MainT) Close() {
	for i := len(m.cleanups) - 1; i >= 0; i-- {
		m.cleanups[i]()
	}
	if m.dir != "" {
		_ = os.RemoveAll(m.dir)
	}
}

// StartMain starts a cluster of n members for a whole test binary, from
// TestMain. Close the returned MainT after the tests ran.
func StartMain(n int) (c *Cluster, m *MainT, err error) {
	m = &MainT{}
	defer func() {
		if r := recover(); r != nil {
			if r != m {
				panic(r)
			}
			m.Close()
			c, err = nil, m.failed
		}
	}()
	return Start(m, n), m, nil
}

// Lazy is a cluster shared by a package's tests, started by the first test
// that asks for it rather than in TestMain. go test -json makes testing
// replace os.Stderr when TestMain calls m.Run, and a member reads os.Stderr
// as it starts serving (grpc-websocket-proxy's logrus logger), which the
// race detector reports when the two overlap; started from a test, the
// member starts after the swap. Close it in TestMain after m.Run.
type Lazy struct {
	n    int
	once sync.Once
	c    *Cluster
	m    *MainT
	err  error
}

// NewLazy returns a Lazy cluster of n members, not started yet.
func NewLazy(n int) *Lazy { return &Lazy{n: n} }

// Get starts the cluster the first time, and fails t if it could not.
func (l *Lazy) Get(t testing.TB) *Cluster {
	t.Helper()
	l.once.Do(func() { l.c, l.m, l.err = StartMain(l.n) })
	if l.err != nil {
		t.Fatalf("start the shared etcd cluster: %v", l.err)
	}
	return l.c
}

// Close stops the cluster, if it was started.
func (l *Lazy) Close() {
	if l.m != nil {
		l.m.Close()
	}
}
