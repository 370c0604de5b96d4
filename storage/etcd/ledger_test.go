package etcd_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/etcd"
	"github.com/taglock/taglock/storage/etcd/etcdtest"
	"github.com/taglock/taglock/storage/ledgertest"
)

// The cluster most tests share, each under a prefix of its own. It starts
// with the first test that needs it, not before m.Run: the embedded etcd
// server's goroutines read globals that the testing package still writes
// while it starts, which the race detector rightly reports.
var (
	sharedOnce sync.Once
	sharedErr  error
	shared     *etcdtest.Cluster
	client     *clientv3.Client
	closeMain  func()
	prefixes   atomic.Int64
)

func TestMain(m *testing.M) {
	code := m.Run()
	if closeMain != nil {
		closeMain()
	}
	os.Exit(code)
}

// sharedCluster starts the shared cluster and its client once, or fails
// the test.
func sharedCluster(t testing.TB) (*etcdtest.Cluster, *clientv3.Client) {
	t.Helper()
	sharedOnce.Do(func() {
		c, mt, err := etcdtest.StartMain(1)
		if err != nil {
			sharedErr = err
			return
		}
		cl, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			mt.Close()
			sharedErr = err
			return
		}
		shared, client = c, cl
		closeMain = func() { _ = cl.Close(); mt.Close() }
	})
	if sharedErr != nil {
		t.Fatalf("start the shared etcd cluster: %v", sharedErr)
	}
	return shared, client
}

// newPrefix returns a key prefix no other test uses.
func newPrefix() string { return fmt.Sprintf("/test/%d/", prefixes.Add(1)) }

// openAt opens a ledger under prefix on the shared cluster and closes it
// when the test ends.
func openAt(t testing.TB, prefix string, o etcd.Options) *etcd.Ledger {
	t.Helper()
	_, cl := sharedCluster(t)
	o.Client, o.Prefix = cl, prefix
	l, err := etcd.Open(context.Background(), o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func TestConformance(t *testing.T) {
	// The etcd ledger passes the backend conformance suite, with replicas
	// that are separate Ledgers (separate clients, as separate processes
	// have) on one prefix.
	t.Parallel()
	ledgertest.RunConformance(t, func(t *testing.T) storage.Ledger {
		return openAt(t, newPrefix(), etcd.Options{})
	}, ledgertest.Replicas(func(t *testing.T, n int) []storage.Ledger {
		p := newPrefix()
		out := make([]storage.Ledger, n)
		for i := range out {
			l, err := etcd.Open(context.Background(), etcd.Options{Endpoints: must(sharedCluster(t)).Endpoints(), Prefix: p})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = l.Close() })
			out[i] = l
		}
		return out
	}))
}

// must returns the cluster of a sharedCluster call.
func must(c *etcdtest.Cluster, _ *clientv3.Client) *etcdtest.Cluster { return c }
