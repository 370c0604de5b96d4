package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/taglock/taglock/internal/cluster"
	"github.com/taglock/taglock/internal/retention"
)

// jobs says where the work that must run once runs: settling the
// reservations of replicas that died, scheduled verify, scheduled
// retention and garbage collection. With the ledger on etcd that is the
// one replica the cluster elects; on bolt, the one process.
type jobs struct {
	c *cluster.Cluster // nil: this process is the only one
}

// term returns a context that ends when this process stops running the
// jobs, and false when it does not run them now.
func (j jobs) term() (context.Context, bool) {
	if j.c == nil {
		return context.Background(), true
	}
	return j.c.Term()
}

// during runs fn if this process runs the jobs, with ctx ended also when
// it stops running them, and reports whether it ran.
func (j jobs) during(ctx context.Context, fn func(context.Context)) bool {
	term, ok := j.term()
	if !ok {
		return false
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(term, cancel)
	defer stop()
	fn(ctx)
	return true
}

// settledElsewhere is proxy.Options.SettledElsewhere: another live replica
// settles its own reservations, and only the elected replica settles
// those of replicas that died.
func (j jobs) settledElsewhere() func(owner string) bool {
	if j.c == nil {
		return nil
	}
	return func(owner string) bool { return !j.c.Leading() || j.c.Alive(owner) }
}

// lock is retention.Options.Lock: one retention run at a time across the
// replicas, scheduled or started by hand on any of them.
func (j jobs) lock() func(ctx context.Context) (func(), error) {
	if j.c == nil {
		return nil
	}
	return func(ctx context.Context) (func(), error) {
		unlock, err := j.c.TryLock(ctx, "retention")
		if errors.Is(err, cluster.ErrLocked) {
			return nil, fmt.Errorf("%w (on another replica)", retention.ErrRunning)
		}
		return unlock, err
	}
}

// others counts the other live replicas, which GC must not run under:
// their writes are not held by this process's gate.
func (j jobs) others(ctx context.Context) (int, error) {
	if j.c == nil {
		return 0, nil
	}
	members, err := j.c.Members(ctx)
	if err != nil {
		return 0, err
	}
	return max(len(members)-1, 0), nil
}

// register adds taglock_cluster_leader to reg.
func (j jobs) register(reg prometheus.Registerer) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "taglock_cluster_leader",
		Help: "1 while this replica runs the jobs that must run once (settling for dead replicas, scheduled verify and retention); always 1 on the bolt ledger.",
	}, func() float64 {
		if _, ok := j.term(); ok {
			return 1
		}
		return 0
	}))
}

// close leaves the cluster, handing the jobs over at once.
func (j jobs) close() {
	if j.c != nil {
		j.c.Close()
	}
}

// newOwner names this process in its reservations and, on etcd, in its
// liveness key: the host name (a pod's name) and a random part, unique
// for every start.
func newOwner() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "taglock"
	}
	host = strings.Map(func(r rune) rune {
		if r == '/' || r == 0 {
			return '-'
		}
		return r
	}, host)
	return host + "-" + hex.EncodeToString(b[:])
}
