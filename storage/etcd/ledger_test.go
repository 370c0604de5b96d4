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

// shared is the cluster most tests use, each under a prefix of its own,
// and sharedClient a client of it.
var (
	shared     = etcdtest.NewLazy(1)
	clientOnce sync.Once
	client     *clientv3.Client
	clientErr  error
	prefixes   atomic.Int64
)

func TestMain(m *testing.M) {
	code := m.Run()
	if client != nil {
		_ = client.Close()
	}
	shared.Close()
	os.Exit(code)
}

// sharedClient returns a client of the shared cluster.
func sharedClient(t testing.TB) *clientv3.Client {
	t.Helper()
	eps := shared.Get(t).Endpoints()
	clientOnce.Do(func() {
		client, clientErr = clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	})
	if clientErr != nil {
		t.Fatal(clientErr)
	}
	return client
}

// newPrefix returns a key prefix no other test uses.
func newPrefix() string { return fmt.Sprintf("/test/%d/", prefixes.Add(1)) }

// openAt opens a ledger under prefix on the shared cluster and closes it
// when the test ends.
func openAt(t testing.TB, prefix string, o etcd.Options) *etcd.Ledger {
	t.Helper()
	o.Client, o.Prefix = sharedClient(t), prefix
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
			l, err := etcd.Open(context.Background(), etcd.Options{Endpoints: shared.Get(t).Endpoints(), Prefix: p})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = l.Close() })
			out[i] = l
		}
		return out
	}))
}
