package etcd

import (
	"context"
	"fmt"

	"github.com/taglock/taglock/storage"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// How a reservation ends: Commit records the push it held, CommitDelete
// the delete, and Release drops it with nothing recorded.

// Commit implements storage.Ledger: one transaction that deletes the
// reservation, on condition that it is still there as read, and stores the
// bindings, manifests and events (see write.commit).
func (l *Ledger) Commit(ctx context.Context, reservationID string, bindings []storage.Binding, events []storage.Event, manifests ...storage.Manifest) error {
	bindings, err := storage.NormalizeBindings(bindings)
	if err != nil {
		return err
	}
	if err := storage.ValidateEvents(events); err != nil {
		return err
	}
	for _, m := range manifests {
		if err := m.Validate(); err != nil {
			return err
		}
	}
	ctx, cancel, err := l.writable(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	w := l.newWrite(bindings)
	defer w.cleanup(ctx)
	rk := l.k.reservation(reservationID)
	return retry(ctx, func() (bool, error) {
		got, err := w.readWith(ctx, []get{{key: rk}})
		if err != nil {
			return false, err
		}
		if len(got[0]) == 0 {
			return false, fmt.Errorf("commit reservation %s: %w", reservationID, storage.ErrNotFound)
		}
		r, err := decodeReservation(got[0][0])
		if err != nil {
			return false, err
		}
		if r.IsDelete() {
			return false, fmt.Errorf("commit reservation %s: a delete is settled with CommitDelete: %w", reservationID, storage.ErrInvalid)
		}
		if err := w.prepare(ctx); err != nil {
			return false, err
		}
		resp, err := w.commit(ctx, func(t *txn) { l.settling(t, r, got[0][0].ModRevision) }, events, manifests)
		if err != nil {
			return false, err
		}
		if !resp.Succeeded && missing(resp, rk) {
			return false, fmt.Errorf("commit reservation %s: %w", reservationID, storage.ErrNotFound)
		}
		return resp.Succeeded, nil
	})
}

// CommitDelete implements storage.Ledger: it reads the reservation and the
// bindings the delete removes (for a manifest, through the ref/ index of
// its digest, all at one revision), then one transaction deletes the
// reservation, on condition that it is still there, and tombstones them,
// on condition that neither they nor the index entries of the digest
// changed since.
func (l *Ledger) CommitDelete(ctx context.Context, reservationID string, ev storage.Event) ([]storage.Binding, error) {
	if ev.Kind == "" {
		ev.Kind = storage.EventDeleted
	}
	if err := storage.ValidateEvents([]storage.Event{{Kind: ev.Kind}}); err != nil {
		return nil, err
	}
	ctx, cancel, err := l.writable(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	rk := l.k.reservation(reservationID)
	var marked []storage.Binding
	err = retry(ctx, func() (bool, error) {
		marked = nil
		resp, err := l.kv.Get(ctx, rk)
		if err != nil {
			return false, err
		}
		if len(resp.Kvs) == 0 {
			return false, fmt.Errorf("commit delete %s: %w", reservationID, storage.ErrNotFound)
		}
		r, err := decodeReservation(resp.Kvs[0])
		if err != nil {
			return false, err
		}
		if !r.IsDelete() {
			return false, fmt.Errorf("commit delete %s: a push is settled with Commit: %w", reservationID, storage.ErrInvalid)
		}
		resRev, rev := resp.Kvs[0].ModRevision, resp.Header.Revision
		at := ev.Time
		if at.IsZero() {
			at = l.clock()
		}
		var gone []candidate
		var guard func(*txn)
		switch {
		case len(r.Tags) > 0:
			bk := l.k.binding(r.Repo, r.Tags[0])
			got, _, err := l.read(ctx, rev, []get{{key: bk}})
			if err != nil {
				return false, err
			}
			var c candidate
			if len(got[0]) > 0 {
				rec, err := decodeBinding(got[0][0])
				if err != nil {
					return false, err
				}
				c = candidate{tag: r.Tags[0], rec: rec, found: true, modRev: got[0][0].ModRevision}
				if !rec.Deleted || r.Mode != nil && rec.Mode != *r.Mode {
					if r.Mode != nil {
						c.rec.Mode = *r.Mode
					}
					gone = append(gone, c)
				}
			}
			guard = func(t *txn) { t.cmp(bk, clientv3.Compare(clientv3.ModRevision(bk), "=", c.modRev)) }
		case !r.Blob:
			cands, p, _, err := l.referencing(ctx, r.Repo, r.Digest, rev)
			if err != nil {
				return false, err
			}
			for _, c := range cands {
				if c.current && c.rec.Digest == r.Digest && !c.rec.Deleted {
					gone = append(gone, c)
				}
			}
			guard = func(t *txn) {
				t.cmp(p, unchangedSince(p, rev))
				if len(cands) > perTagLimit {
					bp := l.k.prefix("b", r.Repo)
					t.cmp(bp, unchangedSince(bp, rev))
					return
				}
				for _, c := range cands {
					bk := l.k.binding(r.Repo, c.tag)
					t.cmp(bk, clientv3.Compare(clientv3.ModRevision(bk), "=", c.modRev))
				}
			}
		}
		w := &write{l: l}
		events := make([]storage.Event, 0, len(gone))
		for _, c := range gone {
			rec := c.rec
			if !rec.Deleted {
				rec.Deleted, rec.DeletedAt = true, at.UTC()
			}
			// A tombstone keeps its generation: its index entries and
			// manifest chunks stay as they are.
			w.bs = append(w.bs, &bindingWrite{b: rec.Binding, old: &c.rec, oldRev: c.modRev, rec: rec})
			e := ev
			e.Seq, e.Time, e.Repo, e.Tag, e.Digest = 0, at, rec.Repo, rec.Tag, rec.Digest
			events = append(events, e)
		}
		resp2, err := w.commit(ctx, func(t *txn) {
			l.settling(t, r, resRev)
			if guard != nil {
				guard(t)
			}
		}, events, nil)
		if err != nil {
			return false, err
		}
		if !resp2.Succeeded {
			if missing(resp2, rk) {
				return false, fmt.Errorf("commit delete %s: %w", reservationID, storage.ErrNotFound)
			}
			return false, nil
		}
		for _, bw := range w.bs {
			b := bw.rec.Binding
			if bw.rec.Chunks > 0 {
				if err := l.loadManifest(ctx, resp2.Header.Revision, &bw.rec); err != nil {
					return false, err
				}
				b = bw.rec.Binding
			}
			marked = append(marked, b)
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	return marked, nil
}

// Release implements storage.Ledger: one transaction deletes the
// reservation and its index entries, on condition that it is still there
// as read.
func (l *Ledger) Release(ctx context.Context, reservationID string) error {
	ctx, cancel, err := l.writable(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	rk := l.k.reservation(reservationID)
	return retry(ctx, func() (bool, error) {
		resp, err := l.kv.Get(ctx, rk)
		if err != nil {
			return false, err
		}
		if len(resp.Kvs) == 0 {
			return true, nil
		}
		r, err := decodeReservation(resp.Kvs[0])
		if err != nil {
			return false, err
		}
		var t txn
		l.settling(&t, r, resp.Kvs[0].ModRevision)
		tr, err := t.commit(ctx, l.kv)
		if err != nil {
			return false, err
		}
		return tr.Succeeded, nil
	})
}
