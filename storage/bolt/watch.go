package bolt

import (
	"context"
	"sync"

	"github.com/taglock/taglock/storage"
)

// watchBuffer is how many changes a watcher may fall behind before it is
// sent a Reset instead of the changes it missed.
const watchBuffer = 1024

// feed hands the bindings this process commits to its watchers. A write
// never waits for a watcher: one that falls more than watchBuffer changes
// behind loses them and gets one Reset once it catches up.
type feed struct {
	mu       sync.Mutex
	watchers map[*watcher]struct{}
	closed   bool
}

type watcher struct {
	ch     chan storage.BindingChange
	missed bool // changes were dropped: send a Reset before the next one
}

func newFeed() *feed { return &feed{watchers: map[*watcher]struct{}{}} }

// publish sends c to every watcher without blocking.
func (f *feed) publish(c storage.BindingChange) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for w := range f.watchers {
		if w.missed {
			select {
			case w.ch <- storage.BindingChange{Reset: true}:
				w.missed = false
			default:
				continue // still behind: the Reset covers c too
			}
		}
		select {
		case w.ch <- c:
		default:
			w.missed = true
		}
	}
}

// close ends every watch.
func (f *feed) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for w := range f.watchers {
		close(w.ch)
		delete(f.watchers, w)
	}
}

// WatchBindings delivers the bindings this process commits from now on
// (see storage.Ledger). A watcher that falls behind gets a Reset.
func (l *Ledger) WatchBindings(ctx context.Context) (<-chan storage.BindingChange, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	w := &watcher{ch: make(chan storage.BindingChange, watchBuffer)}
	f := l.feed
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil, storage.ErrClosed
	}
	f.watchers[w] = struct{}{}
	f.mu.Unlock()
	context.AfterFunc(ctx, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if _, ok := f.watchers[w]; ok {
			delete(f.watchers, w)
			close(w.ch)
		}
	})
	return w.ch, nil
}
