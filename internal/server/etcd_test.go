package server

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/etcd/etcdtest"
)

// TestServeOnEtcd ensures that taglock serves with its ledger on etcd as it
// does on bolt, counts lost history events in its metrics, and fails closed
// when etcd does not answer: /readyz reports
// the ledger within its bound, a push gets 503 and is not forwarded, and
// once etcd is back both recover without a restart.
func TestServeOnEtcd(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Start(t, 1)
	_, base := mustStart(t, func(c *config.Config) {
		c.Ledger.Backend, c.Ledger.Endpoints = config.BackendEtcd, cluster.Endpoints()
		c.Ledger.RequestTimeout = config.Duration(time.Second)
		c.Embedded.UnsafeLocalStorageForTests = true // one replica
	})
	if code, _ := push(t, base, "team/app", "1.0", "one"); code != http.StatusCreated {
		t.Fatalf("push 1.0: %d", code)
	}
	if code, _ := push(t, base, "team/app", "1.0", "two"); code != http.StatusForbidden {
		t.Fatalf("push of other content to 1.0: %d, want 403", code)
	}
	if resp, body := do(t, http.MethodGet, base+"/readyz", "", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz: %d %s", resp.StatusCode, body)
	}
	if _, body := do(t, http.MethodGet, base+"/metrics", "", nil); !strings.Contains(string(body), "taglock_ledger_events_lost_total 0") {
		t.Error("/metrics lacks taglock_ledger_events_lost_total")
	}

	cluster.Member(0).Stop()
	start := time.Now()
	if resp, _ := do(t, http.MethodGet, base+"/readyz", "", nil); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/readyz with etcd down: %d, want 503", resp.StatusCode)
	}
	if took := time.Since(start); took > 6*time.Second {
		t.Errorf("/readyz with etcd down took %s", took)
	}
	m := image(t, base, "team/app", "three")
	if resp, _ := do(t, http.MethodPut, base+"/v2/team/app/manifests/2.0", "application/vnd.oci.image.manifest.v1+json", m); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("push with etcd down: %d, want 503", resp.StatusCode)
	}
	if resp, _ := do(t, http.MethodGet, base+"/v2/team/app/manifests/2.0", "", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("the push refused with etcd down reached the registry: GET 2.0 = %d", resp.StatusCode)
	}

	cluster.Member(0).Restart(t)
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, _ := do(t, http.MethodGet, base+"/readyz", "", nil)
		if resp.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz did not recover: %d", resp.StatusCode)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if code, _ := push(t, base, "team/app", "2.0", "three"); code != http.StatusCreated {
		t.Errorf("push with etcd back: %d", code)
	}
}

// leads reports whether the taglock at base runs the jobs, from its
// taglock_cluster_leader metric.
func leads(t *testing.T, base string) bool {
	t.Helper()
	_, body := do(t, http.MethodGet, base+"/metrics", "", nil)
	return strings.Contains(string(body), "\ntaglock_cluster_leader 1\n")
}

// TestReplicasOnEtcdShareTheJobs ensures that of two replicas on one etcd
// ledger exactly one runs the jobs, that it settles a reservation a dead
// replica left (no live replica owns it), and that when it stops the other
// takes the jobs over.
func TestReplicasOnEtcdShareTheJobs(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Start(t, 1)
	edit := func(c *config.Config) {
		c.Ledger.Backend, c.Ledger.Endpoints = config.BackendEtcd, cluster.Endpoints()
		c.Ledger.LeaseTTL = config.Duration(2 * time.Second)
		c.Upstream.SettleMargin = config.Duration(time.Second)
		c.Embedded.UnsafeLocalStorageForTests = true // the test pushes nothing
	}
	a, baseA := startOnly(t, edit)
	defer func() { _ = a.Shutdown(context.Background()) }()
	b, baseB := startOnly(t, edit)
	defer func() { _ = b.Shutdown(context.Background()) }()
	deadline := time.Now().Add(10 * time.Second)
	for leads(t, baseA) == leads(t, baseB) {
		if time.Now().After(deadline) {
			t.Fatalf("not exactly one leader: a %v, b %v", leads(t, baseA), leads(t, baseB))
		}
		time.Sleep(100 * time.Millisecond)
	}
	leader, other := a, baseB
	if !leads(t, baseA) {
		leader, other = b, baseA
	}

	ctx := context.Background()
	res, err := leader.Ledger().Reserve(ctx, storage.Reservation{Repo: "team/app", Tags: []string{"1.0"}, Digest: digest.FromString("x"),
		Owner: "a-replica-that-died", Deadline: time.Now().Add(-time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := leader.Ledger().Reservation(ctx, res.ID); errors.Is(err, storage.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the dead replica's reservation was not settled")
		}
	}

	if err := leader.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !leads(t, other); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the other replica did not take the jobs over after the leader stopped")
		}
	}
}

// TestEtcdReplicaOnLocalStorageIsRefused ensures that serve refuses to
// start a replica on the etcd ledger whose embedded registry would keep
// blobs on local disk, saying what to do, and starts it with the
// tests-only override.
func TestEtcdReplicaOnLocalStorageIsRefused(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Start(t, 1)
	cfg := config.Default()
	cfg.Listen, cfg.Data = "127.0.0.1:0", t.TempDir()
	cfg.Ledger.Backend, cfg.Ledger.Endpoints = config.BackendEtcd, cluster.Endpoints()
	_, err := Start(context.Background(), cfg, zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "other replicas sharing the etcd ledger cannot see") ||
		!strings.Contains(err.Error(), "embedded.unsafe_local_storage_for_tests") {
		t.Fatalf("Start with local storage on etcd: %v, want a refusal naming the override", err)
	}
	cfg.Embedded.UnsafeLocalStorageForTests = true
	srv, err := Start(context.Background(), cfg, zerolog.Nop())
	if err != nil {
		t.Fatalf("Start with the override: %v", err)
	}
	_ = srv.Shutdown(context.Background())
}
