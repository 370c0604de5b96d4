// Package cluster coordinates the taglock replicas that share one etcd
// ledger. It says which replicas are alive, elects the one replica that runs
// the work that must run once (settling the reservations of replicas that
// died, scheduled verify, scheduled retention and its garbage collection),
// and lends named locks for jobs that an operator may also start by hand.
//
// # Basics
//
// [Join] opens an etcd session: a lease of [Options.TTL] that the client
// keeps alive while the process runs. Under the ledger's key prefix the
// replica then holds, bound to that lease,
//
//	live/<owner>          its liveness key (owner is the name its
//	                      reservations carry, proxy.Options.Owner)
//	leader/jobs/<lease>   its candidacy in the election of the job runner
//	                      (etcd's concurrency.Election)
//	lock/<name>/<lease>   a lock it holds (etcd's concurrency.Mutex)
//
// When a replica dies, etcd removes all of them once its lease expires,
// at most TTL after the replica's last keep-alive: the others then see it
// dead, and the next candidate in the election, waiting on a watch, leads
// within moments. A replica that loses its lease while it runs (etcd
// unreachable for longer than TTL) stops leading as soon as its client
// notices, which is no later than TTL after its last successful keep-alive,
// and joins again with a new lease when etcd answers.
//
// # Caveats
//
// Leadership is an etcd lease, so for a moment around a lease's expiry an
// old leader may still be finishing a step while the new one starts: the
// jobs it guards are correct when run twice at once (their deletes and
// settles go through ledger reservations, which etcd transactions
// serialise); leadership only keeps them from running once per replica.
// Without quorum no lease expires, so no replica is taken for dead and the
// leader keeps its place; the jobs fail on the ledger meanwhile, as every
// write does.
//
// It must not decide anything about tags, and it holds no ledger records.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// DefaultTTL is the lease time to live when Options.TTL is zero: a dead
// replica is seen dead, and its jobs taken over, within it.
const DefaultTTL = 10 * time.Second

// ErrLocked is returned by TryLock when another replica holds the lock.
var ErrLocked = errors.New("held by another replica")

// ErrNoSession means the replica has no live lease right now (etcd has not
// answered since it lost it), so it can take no lock.
var ErrNoSession = errors.New("no etcd session: the cluster has not answered")

// Options configures Join.
type Options struct {
	// Client is the etcd client, shared with the ledger. Required.
	Client *clientv3.Client
	// Prefix is the ledger's key prefix; the keys above go under it.
	// Required.
	Prefix string
	// Owner names this replica, as its reservations do. Required.
	Owner string
	// TTL is the lease's time to live, whole seconds, at least 2s.
	// Default DefaultTTL.
	TTL time.Duration
	// RequestTimeout bounds each request to etcd. Default 5s.
	RequestTimeout time.Duration
	// Log receives leadership changes and lost leases. Default
	// zerolog.Nop().
	Log zerolog.Logger
	// Observer joins without taking part, as a command run by hand
	// does: no liveness key and no candidacy, only locks and the view of
	// who is alive. Default false.
	Observer bool
}

// Cluster is this replica's membership. Its methods are safe for
// concurrent use.
type Cluster struct {
	o      Options
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	sess    *concurrency.Session // nil while the lease is lost
	term    context.Context      // ends when this replica stops leading; nil when not leading
	endTerm context.CancelFunc
	leads   int // how many times this replica became the leader

	liveMu  sync.Mutex
	live    map[string]bool
	liveAt  time.Time
	liveErr error
}

// Join starts this replica's membership and returns once it holds its
// lease and liveness key, or fails when etcd does not answer within the
// request timeout. It then keeps campaigning in the background until
// Close.
func Join(ctx context.Context, o Options) (*Cluster, error) {
	if o.Client == nil || o.Prefix == "" || o.Owner == "" {
		return nil, errors.New("cluster: Client, Prefix and Owner are required")
	}
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	if o.TTL < 2*time.Second {
		return nil, fmt.Errorf("cluster: lease TTL %s is below 2s", o.TTL)
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 5 * time.Second
	}
	c := &Cluster{o: o, done: make(chan struct{})}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	jctx, cancel := context.WithTimeout(ctx, o.RequestTimeout)
	defer cancel()
	sess, err := c.open(jctx)
	if err != nil {
		c.cancel()
		return nil, fmt.Errorf("cluster: join: %w", err)
	}
	go c.run(sess)
	return c, nil
}

func (c *Cluster) liveKey(owner string) string { return c.o.Prefix + "live/" + owner }
func (c *Cluster) electionKey() string         { return c.o.Prefix + "leader/jobs" }
func (c *Cluster) lockKey(name string) string  { return c.o.Prefix + "lock/" + name }

// open grants a lease and writes the liveness key bound to it.
func (c *Cluster) open(ctx context.Context) (*concurrency.Session, error) {
	lease, err := c.o.Client.Grant(ctx, int64(c.o.TTL/time.Second))
	if err != nil {
		return nil, err
	}
	sess, err := concurrency.NewSession(c.o.Client, concurrency.WithLease(lease.ID), concurrency.WithContext(c.ctx))
	if err != nil {
		return nil, err
	}
	if !c.o.Observer {
		if _, err := c.o.Client.Put(ctx, c.liveKey(c.o.Owner), time.Now().UTC().Format(time.RFC3339), clientv3.WithLease(sess.Lease())); err != nil {
			_, _ = c.o.Client.Revoke(ctx, lease.ID)
			return nil, err
		}
	}
	c.mu.Lock()
	c.sess = sess
	c.mu.Unlock()
	return sess, nil
}

// run campaigns with sess until its lease is lost, then joins again with a
// new one, until Close.
func (c *Cluster) run(sess *concurrency.Session) {
	defer close(c.done)
	for pause := time.Duration(0); ; {
		if sess != nil {
			c.serve(sess)
			pause = 0
		}
		if c.ctx.Err() != nil {
			return
		}
		select {
		case <-c.ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(max(2*pause, 200*time.Millisecond), 5*time.Second)
		ctx, cancel := context.WithTimeout(c.ctx, c.o.RequestTimeout)
		var err error
		sess, err = c.open(ctx)
		cancel()
		if err != nil && c.ctx.Err() == nil {
			c.o.Log.Warn().Err(err).Msg("cluster: cannot renew this replica's lease; it takes part again when etcd answers")
		} else if err == nil {
			c.o.Log.Info().Str("owner", c.o.Owner).Msg("cluster: joined again with a new lease")
		}
	}
}

// serve campaigns with sess and leads once elected, until the lease is
// lost or Close.
func (c *Cluster) serve(sess *concurrency.Session) {
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	el := concurrency.NewElection(sess, c.electionKey())
	var err error
	if c.o.Observer {
		<-ctx.Done()
	} else {
		err = el.Campaign(ctx, c.o.Owner)
	}
	if err == nil && ctx.Err() == nil {
		term, end := context.WithCancel(ctx)
		c.mu.Lock()
		c.term, c.endTerm = term, end
		c.leads++
		c.mu.Unlock()
		c.o.Log.Info().Str("owner", c.o.Owner).Msg("cluster: this replica now runs the scheduled jobs and settles for dead replicas")
		<-ctx.Done()
		end()
	} else if err != nil && ctx.Err() == nil {
		c.o.Log.Warn().Err(err).Msg("cluster: campaign failed")
	}
	c.mu.Lock()
	wasLeading := c.term != nil
	c.term, c.endTerm = nil, nil
	c.sess = nil
	c.mu.Unlock()
	if c.ctx.Err() != nil {
		// Leaving: give up the election and the liveness key at once
		// rather than when the lease expires.
		rctx, rcancel := context.WithTimeout(context.Background(), c.o.RequestTimeout)
		defer rcancel()
		if wasLeading {
			_ = el.Resign(rctx)
		}
		_, _ = c.o.Client.Revoke(rctx, sess.Lease())
		return
	}
	if wasLeading {
		c.o.Log.Warn().Str("owner", c.o.Owner).Msg("cluster: lost this replica's lease; it no longer runs the scheduled jobs")
	} else {
		c.o.Log.Warn().Str("owner", c.o.Owner).Msg("cluster: lost this replica's lease")
	}
}

// Leading reports whether this replica runs the jobs that must run once.
func (c *Cluster) Leading() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.term != nil && c.term.Err() == nil
}

// Term returns a context that ends when this replica stops leading, and
// false when it does not lead now.
func (c *Cluster) Term() (context.Context, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.term == nil || c.term.Err() != nil {
		return nil, false
	}
	return c.term, true
}

// Leads counts how many times this replica became the leader.
func (c *Cluster) Leads() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leads
}

// aliveFor is how long Alive reuses its last read of the liveness keys.
const aliveFor = time.Second

// Alive reports whether the replica named owner holds its liveness key. It
// reads the keys at most once a second. When etcd cannot tell, it reports
// true: a replica is never taken for dead on no evidence.
func (c *Cluster) Alive(owner string) bool {
	if owner == c.o.Owner {
		return true
	}
	c.liveMu.Lock()
	defer c.liveMu.Unlock()
	if time.Since(c.liveAt) >= aliveFor {
		c.live, c.liveErr = c.readLive()
		c.liveAt = time.Now()
	}
	return c.liveErr != nil || c.live[owner]
}

// Members returns the owners of the live replicas, sorted: this one
// included, unless it is an observer.
func (c *Cluster) Members(ctx context.Context) ([]string, error) {
	live, err := c.readLiveCtx(ctx)
	if err != nil {
		return nil, err
	}
	return slices.Sorted(maps.Keys(live)), nil
}

func (c *Cluster) readLive() (map[string]bool, error) { return c.readLiveCtx(c.ctx) }

func (c *Cluster) readLiveCtx(ctx context.Context) (map[string]bool, error) {
	ctx, cancel := context.WithTimeout(ctx, c.o.RequestTimeout)
	defer cancel()
	p := c.liveKey("")
	resp, err := c.o.Client.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	live := map[string]bool{}
	for _, kv := range resp.Kvs {
		live[strings.TrimPrefix(string(kv.Key), p)] = true
	}
	return live, nil
}

// TryLock takes the lock name for as long as this replica's lease lives,
// or fails at once with ErrLocked when another replica holds it. The
// returned function releases it.
func (c *Cluster) TryLock(ctx context.Context, name string) (unlock func(), err error) {
	c.mu.Lock()
	sess := c.sess
	c.mu.Unlock()
	if sess == nil {
		return nil, ErrNoSession
	}
	ctx, cancel := context.WithTimeout(ctx, c.o.RequestTimeout)
	defer cancel()
	m := concurrency.NewMutex(sess, c.lockKey(name))
	switch err := m.TryLock(ctx); {
	case errors.Is(err, concurrency.ErrLocked):
		return nil, fmt.Errorf("lock %s: %w", name, ErrLocked)
	case err != nil:
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), c.o.RequestTimeout)
		defer cancel()
		_ = m.Unlock(ctx) // a lost lease released it already
	}, nil
}

// Close leaves the cluster: it resigns the leadership, deletes the
// liveness key at once and stops the background work.
func (c *Cluster) Close() {
	c.cancel()
	<-c.done
}
