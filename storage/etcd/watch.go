package etcd

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/internal/keys"
)

// WatchBindings delivers the bindings any replica writes from now on, from
// an etcd watch on the b/ section (see storage.Ledger). The watch requires
// a leader: a member cut off from the cluster cancels it rather than going
// quiet, and a watch that was cancelled, or whose revision was compacted,
// is started again from the current revision after a Reset.
func (l *Ledger) WatchBindings(ctx context.Context) (<-chan storage.BindingChange, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if l.closed.Load() {
		return nil, storage.ErrClosed
	}
	// The watch starts at the revision read here, so that every write
	// after WatchBindings returns is delivered.
	rctx, cancel := context.WithTimeout(ctx, l.timeout)
	resp, err := l.kv.Get(rctx, l.k.meta())
	cancel()
	if err != nil {
		return nil, err
	}
	out := make(chan storage.BindingChange, 256)
	ctx, stop := context.WithCancel(ctx)
	unlink := context.AfterFunc(l.life, stop) // Close ends the watch
	go func() {
		defer unlink()
		defer stop()
		l.watch(ctx, resp.Header.Revision+1, out)
	}()
	return out, nil
}

func (l *Ledger) watch(ctx context.Context, rev int64, out chan<- storage.BindingChange) {
	defer close(out)
	p := l.k.prefix("b")
	send := func(c storage.BindingChange) bool {
		select {
		case out <- c:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for pause := time.Duration(0); ctx.Err() == nil; {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for resp := range l.c.Watch(wctx, p, clientv3.WithPrefix(), clientv3.WithRev(rev)) {
			if resp.CompactRevision != 0 || resp.Canceled || resp.Err() != nil {
				break
			}
			for _, ev := range resp.Events {
				parts, ok := keys.Split(ev.Kv.Key[len(p):], 2)
				if !ok {
					continue
				}
				if !send(storage.BindingChange{Repo: parts[0], Tag: parts[1]}) {
					cancel()
					return
				}
			}
			rev, pause = resp.Header.Revision+1, 0
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		// The watch ended: changes may have been missed. Start again
		// from now, after telling the consumer.
		if !send(storage.BindingChange{Reset: true}) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(max(2*pause, 100*time.Millisecond), 5*time.Second)
		rctx, rcancel := context.WithTimeout(ctx, l.timeout)
		if resp, err := l.kv.Get(rctx, l.k.meta()); err == nil {
			rev = resp.Header.Revision + 1
		}
		rcancel()
	}
}
