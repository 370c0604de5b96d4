package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/taglock/taglock/internal/cluster"
	"github.com/taglock/taglock/storage/etcd/etcdtest"
)

// shared is the etcd cluster the tests share, each under a prefix of its
// own; it starts with the first test (see etcdtest.Lazy).
var (
	shared   = etcdtest.NewLazy(1)
	prefixes atomic.Int64
)

func TestMain(m *testing.M) {
	code := m.Run()
	shared.Close()
	os.Exit(code)
}

// replica joins the cluster under prefix as owner, with a client of its
// own, as a separate process would; kill closes that client without
// leaving, as a crash does.
type replica struct {
	*cluster.Cluster
	client *clientv3.Client
}

func join(t *testing.T, prefix, owner string) *replica {
	t.Helper()
	return joinWith(t, cluster.Options{Prefix: prefix, Owner: owner})
}

// joinWith is join with options; Client and TTL are filled in.
func joinWith(t *testing.T, o cluster.Options) *replica {
	t.Helper()
	client, err := clientv3.New(clientv3.Config{Endpoints: shared.Get(t).Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	o.Client, o.TTL = client, 2*time.Second
	c, err := cluster.Join(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{Cluster: c, client: client}
	t.Cleanup(func() { r.Close(); _ = client.Close() })
	return r
}

func (r *replica) kill() { _ = r.client.Close() }

func newPrefix() string { return fmt.Sprintf("/cluster/%d/", prefixes.Add(1)) }

// waitFor polls cond every 50ms until it holds or within fails the test,
// and returns how long it took.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

func leaders(rs ...*replica) int {
	n := 0
	for _, r := range rs {
		if r.Leading() {
			n++
		}
	}
	return n
}

func TestOneReplicaLeadsAndAnotherTakesOverWhenItLeaves(t *testing.T) {
	// Of three replicas exactly one leads; every one sees the others
	// alive; when the leader leaves (a clean shutdown), another leads at
	// once and the leaver is no longer alive.
	t.Parallel()
	p := newPrefix()
	rs := []*replica{join(t, p, "a"), join(t, p, "b"), join(t, p, "c")}
	waitFor(t, 5*time.Second, "one leader", func() bool { return leaders(rs...) == 1 })
	for _, r := range rs {
		for _, o := range []string{"a", "b", "c"} {
			if !r.Alive(o) {
				t.Errorf("a replica does not see %s alive", o)
			}
		}
		if r.Alive("nobody") {
			t.Error("a replica that never joined is alive")
		}
	}
	var leader int
	for i, r := range rs {
		if r.Leading() {
			leader = i
		}
	}
	rs[leader].Close()
	rest := append(append([]*replica{}, rs[:leader]...), rs[leader+1:]...)
	took := waitFor(t, 3*time.Second, "a new leader after the leader left", func() bool { return leaders(rest...) == 1 })
	t.Logf("takeover after a clean leave: %s", took)
	gone := string(rune('a' + leader))
	waitFor(t, 3*time.Second, "the leaver seen dead", func() bool { return !rest[0].Alive(gone) })
}

func TestAKilledLeaderIsReplacedWithinTheLeaseTTL(t *testing.T) {
	// A leader that dies without leaving is replaced once its lease
	// expires, within the TTL (2s here) and a little, and is then seen
	// dead; the others never both lead.
	t.Parallel()
	p := newPrefix()
	a := join(t, p, "a")
	waitFor(t, 5*time.Second, "a leads", a.Leading)
	b := join(t, p, "b")
	if b.Leading() {
		t.Fatal("b leads while a does")
	}
	a.kill()
	start := time.Now()
	waitFor(t, 5*time.Second, "b leads", b.Leading)
	took := time.Since(start)
	t.Logf("takeover after a kill, TTL 2s: %s", took)
	if took > 4*time.Second {
		t.Errorf("takeover took %s, want within the 2s TTL and a little", took)
	}
	waitFor(t, 3*time.Second, "a seen dead", func() bool { return !b.Alive("a") })
}

func TestTryLockIsHeldByOneReplica(t *testing.T) {
	// A lock held by one replica is refused to another with ErrLocked
	// until released, and a dead holder's lock goes with its lease.
	t.Parallel()
	p := newPrefix()
	a, b := join(t, p, "a"), join(t, p, "b")
	ctx := context.Background()
	unlock, err := a.TryLock(ctx, "retention")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.TryLock(ctx, "retention"); !errors.Is(err, cluster.ErrLocked) {
		t.Fatalf("second TryLock: %v, want ErrLocked", err)
	}
	unlock()
	unlockB, err := b.TryLock(ctx, "retention")
	if err != nil {
		t.Fatalf("TryLock after release: %v", err)
	}
	unlockB()

	if _, err := a.TryLock(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	a.kill()
	waitFor(t, 5*time.Second, "the dead holder's lock freed", func() bool {
		u, err := b.TryLock(ctx, "other")
		if err == nil {
			u()
		}
		return err == nil
	})
}

func TestAnObserverTakesLocksButNeverLeadsNorCountsAlive(t *testing.T) {
	// A command run by hand joins as an observer: it can take the
	// retention lock a replica would otherwise take, but it is not among
	// the live members and never becomes the leader, even alone.
	t.Parallel()
	p := newPrefix()
	obs := joinWith(t, cluster.Options{Prefix: p, Owner: "command", Observer: true})
	ctx := context.Background()
	time.Sleep(500 * time.Millisecond)
	if obs.Leading() {
		t.Fatal("an observer alone leads")
	}
	if members, err := obs.Members(ctx); err != nil || len(members) != 0 {
		t.Errorf("members with an observer only = %v, %v; want none", members, err)
	}
	unlock, err := obs.TryLock(ctx, "retention")
	if err != nil {
		t.Fatal(err)
	}
	a := join(t, p, "a")
	waitFor(t, 5*time.Second, "the replica leads", a.Leading)
	if _, err := a.TryLock(ctx, "retention"); !errors.Is(err, cluster.ErrLocked) {
		t.Errorf("the replica's TryLock while the observer holds the lock: %v, want ErrLocked", err)
	}
	unlock()
	if members, _ := a.Members(ctx); len(members) != 1 || members[0] != "a" {
		t.Errorf("members = %v, want [a]", members)
	}
}
