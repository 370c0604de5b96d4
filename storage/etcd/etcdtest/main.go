package etcdtest

import (
	"fmt"
	"os"
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
