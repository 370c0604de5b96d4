package bolt

import (
	"fmt"
	"sync"

	bbolt "go.etcd.io/bbolt"
)

// group commits concurrent writes together. bbolt allows one writer at a
// time and every commit waits for an fsync, so without it concurrent pushes
// queue behind each other's fsyncs. A write that arrives while no commit is
// running is committed at once, alone: grouping never delays a lone writer,
// unlike bbolt's timer-based DB.Batch. Writes that arrive while a commit is
// running wait for it and are then committed together, in one transaction
// and one fsync.
//
// Each write's function may run more than once, so it must keep its effects
// inside the transaction. When one write of a group fails, the whole
// transaction is rolled back: the failed write runs again alone, so its
// verdict is judged on committed data only, and the others are retried in
// the next group.
type group struct {
	db *bbolt.DB
	// seal, when not nil, ends every transaction that commits.
	seal func(*bbolt.Tx) error

	mu      sync.Mutex
	pending []*write
	busy    bool // a goroutine is committing pending writes
}

type write struct {
	fn   func(*bbolt.Tx) error
	done chan error
}

// update runs fn in a read-write transaction, alone or with other writes,
// and returns fn's error or the commit's.
func (g *group) update(fn func(*bbolt.Tx) error) error {
	w := &write{fn: fn, done: make(chan error, 1)}
	g.mu.Lock()
	g.pending = append(g.pending, w)
	lead := !g.busy
	g.busy = true
	g.mu.Unlock()
	if lead {
		g.run(true)
	}
	return <-w.done
}

// run commits pending writes, group after group, until none is left. The
// caller that started it has its own write in the first group; after that
// group it hands the rest to a new goroutine instead of keeping its caller
// waiting.
func (g *group) run(first bool) {
	for {
		g.mu.Lock()
		ws := g.pending
		g.pending = nil
		if len(ws) == 0 {
			g.busy = false
			g.mu.Unlock()
			return
		}
		g.mu.Unlock()
		g.commit(ws)
		if first {
			g.mu.Lock()
			more := len(g.pending) > 0
			if !more {
				g.busy = false
			}
			g.mu.Unlock()
			if more {
				go g.run(false)
			}
			return
		}
	}
}

// commit runs ws in one transaction and tells each write its outcome, or
// puts writes back in front of the queue when another write's failure
// rolled them back.
func (g *group) commit(ws []*write) {
	if len(ws) == 1 {
		ws[0].done <- g.db.Update(func(tx *bbolt.Tx) error { return g.sealed(tx, call(ws[0].fn, tx)) })
		return
	}
	failed := -1
	err := g.db.Update(func(tx *bbolt.Tx) error {
		for i, w := range ws {
			if err := call(w.fn, tx); err != nil {
				failed = i
				return err
			}
		}
		return g.sealed(tx, nil)
	})
	if failed < 0 {
		// Committed, or the commit itself failed: the same outcome for all.
		for _, w := range ws {
			w.done <- err
		}
		return
	}
	bad := ws[failed]
	bad.done <- g.db.Update(func(tx *bbolt.Tx) error { return g.sealed(tx, call(bad.fn, tx)) })
	rest := make([]*write, 0, len(ws)-1)
	rest = append(rest, ws[:failed]...)
	rest = append(rest, ws[failed+1:]...)
	g.mu.Lock()
	g.pending = append(rest, g.pending...)
	g.mu.Unlock()
}

// sealed ends a transaction whose writes returned err: it seals it when
// they succeeded.
func (g *group) sealed(tx *bbolt.Tx, err error) error {
	if err != nil || g.seal == nil {
		return err
	}
	return g.seal(tx)
}

// call runs fn, turning a panic into an error for fn's own caller: the
// panic must not take down the goroutine committing other callers' writes,
// nor leave the group busy for ever.
func call(fn func(*bbolt.Tx) error, tx *bbolt.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("ledger write panicked: %v", p)
		}
	}()
	return fn(tx)
}
