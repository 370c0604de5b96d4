package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/taglock/taglock/storage"
)

// schemaVersion is the key layout version stored under meta/version.
const schemaVersion = "1"

// Defaults of Options.
const (
	// DefaultPrefix is the key prefix when Options.Prefix is empty.
	DefaultPrefix = "/taglock/"
	// DefaultDialTimeout bounds connecting when Options.DialTimeout is
	// zero.
	DefaultDialTimeout = 5 * time.Second
	// DefaultRequestTimeout bounds every call when
	// Options.RequestTimeout is zero.
	DefaultRequestTimeout = 5 * time.Second
)

// Options configure Open. Endpoints (or Client) is required.
type Options struct {
	// Endpoints are the cluster's client URLs.
	Endpoints []string
	// Client, when set, is used instead of dialling Endpoints, and Close
	// leaves it open. Default nil.
	Client *clientv3.Client
	// Prefix is the key prefix of the ledger; it must end in "/". Ledgers
	// opened with one prefix share one ledger. Default DefaultPrefix.
	Prefix string
	// DialTimeout bounds connecting to the cluster. Default
	// DefaultDialTimeout (5s).
	DialTimeout time.Duration
	// RequestTimeout bounds every call of the ledger, retries included,
	// on top of the caller's context: without an answer within it (the
	// cluster unreachable, or without quorum) the call fails. Default
	// DefaultRequestTimeout (5s).
	RequestTimeout time.Duration
	// TLS is the client's TLS configuration; nil dials without TLS.
	TLS *tls.Config
	// Username and Password authenticate to etcd; "" for none.
	Username, Password string
	// ReadOnly makes every write fail with storage.ErrReadOnly. Default
	// false.
	ReadOnly bool
	// Now is the ledger's clock, used for reservation times and for events
	// recorded without a time; the ledger stores its readings in UTC.
	// Default time.Now.
	Now func() time.Time
	// Log receives what goes wrong without failing a call: a history
	// write that could not follow its binding, an index left to clean.
	// Default zerolog.Nop().
	Log zerolog.Logger
}

// Ledger is a ledger kept in etcd under one key prefix. It is safe for
// concurrent use, and any number of Ledgers, in any number of processes,
// may share a prefix.
type Ledger struct {
	c        *clientv3.Client
	ownsC    bool
	kv       clientv3.KV
	k        keyspace
	timeout  time.Duration
	now      func() time.Time
	readOnly bool
	log      zerolog.Logger
	seq      *sequencer
	appends  *appender
	lost     atomic.Uint64
	closed   atomic.Bool
	life     context.Context // ends at Close
	endLife  context.CancelFunc
}

var _ storage.Ledger = (*Ledger)(nil)

// Open connects to the cluster and opens the ledger under o.Prefix,
// writing its schema version when the prefix is empty. It fails with an
// error wrapping storage.ErrCorrupt when the prefix holds a ledger of
// another version, and with the client's error when the cluster does not
// answer within the dial and request timeouts.
func Open(ctx context.Context, o Options) (*Ledger, error) {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(o.Prefix, "/") {
		return nil, fmt.Errorf("etcd ledger prefix %q must end in /", o.Prefix)
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	l := &Ledger{c: o.Client, k: keyspace(o.Prefix), timeout: o.RequestTimeout, now: o.Now, readOnly: o.ReadOnly, log: o.Log}
	l.life, l.endLife = context.WithCancel(context.Background())
	if l.c == nil {
		if len(o.Endpoints) == 0 {
			return nil, errors.New("etcd ledger: no endpoints")
		}
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   o.Endpoints,
			DialTimeout: o.DialTimeout,
			TLS:         o.TLS,
			Username:    o.Username,
			Password:    o.Password,
			Logger:      zap.NewNop(),
			// Keep a broken connection from hanging calls past their
			// deadline: the keepalive notices a dead member.
			DialKeepAliveTime:    10 * time.Second,
			DialKeepAliveTimeout: 3 * time.Second,
			PermitWithoutStream:  true,
			MaxCallSendMsgSize:   maxRequestBytes + 512*1024,
		})
		if err != nil {
			return nil, fmt.Errorf("etcd ledger: %w", err)
		}
		l.c, l.ownsC = c, true
	}
	l.kv = l.c.KV
	l.seq = newSequencer()
	l.appends = &appender{l: l}
	ctx, cancel := context.WithTimeout(ctx, o.DialTimeout+o.RequestTimeout)
	defer cancel()
	if err := l.openLayout(ctx); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("open etcd ledger %s: %w", o.Prefix, err)
	}
	return l, nil
}

// openLayout checks the schema version, writing it into an empty prefix.
func (l *Ledger) openLayout(ctx context.Context) error {
	k := l.k.meta()
	var got []byte
	if l.readOnly {
		resp, err := l.kv.Get(ctx, k)
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			return nil // an empty ledger
		}
		got = resp.Kvs[0].Value
	} else {
		resp, err := l.kv.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
			Then(clientv3.OpPut(k, schemaVersion)).
			Else(clientv3.OpGet(k)).Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			return nil
		}
		got = resp.Responses[0].GetResponseRange().Kvs[0].Value
	}
	if string(got) != schemaVersion {
		return fmt.Errorf("schema version %q, want %q: %w", got, schemaVersion, storage.ErrCorrupt)
	}
	return nil
}

// Close closes the client, unless Options.Client gave it. Closing a closed
// ledger is not an error.
func (l *Ledger) Close() error {
	if l.closed.Swap(true) {
		return nil
	}
	l.endLife()
	if !l.ownsC {
		return nil
	}
	return l.c.Close()
}

// LostEvents counts the history events a write could not record after
// the bindings they describe, because the write was too large for one
// transaction and the follow-up failed. Each is also logged.
func (l *Ledger) LostEvents() uint64 { return l.lost.Load() }

// Client is the etcd client the ledger uses, for what shares the cluster
// with it (the replicas' leases, package cluster); closing the ledger
// closes it when Open dialled it.
func (l *Ledger) Client() *clientv3.Client { return l.c }

// Prefix is the key prefix the ledger lives under.
func (l *Ledger) Prefix() string { return string(l.k) }

// clock returns Options.Now() in UTC, without a monotonic reading, so that
// times read back from the ledger equal the times written.
func (l *Ledger) clock() time.Time { return l.now().UTC() }

// bounded returns ctx bounded by the request timeout, after checking that
// ctx has not ended.
func (l *Ledger) bounded(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	return ctx, cancel, nil
}

// writable checks ctx and that the ledger may be written, and bounds ctx.
func (l *Ledger) writable(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if l.readOnly {
		return nil, nil, storage.ErrReadOnly
	}
	return l.bounded(ctx)
}

// retry runs attempt until it reports done or fails, pausing a little,
// longer each time, after conflicts, until ctx ends.
func retry(ctx context.Context, attempt func() (done bool, err error)) error {
	for i := 0; ; i++ {
		done, err := attempt()
		if err != nil || done {
			return err
		}
		if i >= 2 {
			pause := time.Duration(1+rand.IntN(min(i, 20))) * time.Millisecond
			select {
			case <-ctx.Done():
				return fmt.Errorf("gave up after %d conflicting writes: %w", i+1, ctx.Err())
			case <-time.After(pause):
			}
		} else if err := ctx.Err(); err != nil {
			return err
		}
	}
}
