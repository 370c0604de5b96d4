package etcd

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/taglock/taglock/storage"
)

// A reservation of more tags than perTagLimit compares its repository's
// bindings and tag holders as a whole rather than tag by tag, to stay
// within one transaction's compares; maxTags is the most one may hold, so
// that the Commit of as many bindings, which also deletes a holder entry
// per tag, fits one transaction.
const (
	perTagLimit = 40
	maxTags     = 60
)

// Reserve implements storage.Ledger: one read of everything the decision
// rests on, at one revision R, then one transaction that stores the
// reservation only if none of it changed after R. The transaction compares
// the ModRevision of each tag's binding with the one read (0 when there
// was none), and requires that no key appeared or changed after R under
// each tag's holders (rtag/repo/tag/) and under the reservations that may
// conflict on digests (rdig/repo/delete/ for a push; rdig/repo/ for a
// delete by digest). A compare that fails means another writer got there
// first: Reserve reads again and decides again.
func (l *Ledger) Reserve(ctx context.Context, r storage.Reservation) (storage.Reservation, error) {
	r, err := storage.NormalizeReservation(r)
	if err != nil {
		return storage.Reservation{}, err
	}
	if len(r.Tags) > maxTags {
		return storage.Reservation{}, fmt.Errorf("reservation for %s holds %d tags, more than the etcd ledger's %d: %w", r.Repo, len(r.Tags), maxTags, storage.ErrInvalid)
	}
	if r.ID == "" {
		if r.ID, err = storage.NewReservationID(); err != nil {
			return storage.Reservation{}, err
		}
	}
	ctx, cancel, err := l.writable(ctx)
	if err != nil {
		return storage.Reservation{}, err
	}
	defer cancel()
	err = retry(ctx, func() (bool, error) {
		t, err := l.decideReserve(ctx, &r)
		if err != nil {
			return false, err
		}
		r.CreatedAt = l.clock()
		if err := l.putReservation(t, r); err != nil {
			return false, err
		}
		resp, err := t.commit(ctx, l.kv)
		if err != nil {
			return false, err
		}
		return resp.Succeeded, nil
	})
	if err != nil {
		return storage.Reservation{}, err
	}
	return r, nil
}

// decideReserve reads what r needs, decides whether it may be stored,
// and returns the compares that keep that decision true.
func (l *Ledger) decideReserve(ctx context.Context, r *storage.Reservation) (*txn, error) {
	wholeRepo := len(r.Tags) > perTagLimit
	gets := []get{{key: l.k.reservation(r.ID)}}
	if wholeRepo {
		gets = append(gets, get{key: l.k.prefix("b", r.Repo), prefix: true}, get{key: l.k.prefix("rtag", r.Repo), prefix: true})
	} else {
		for _, tag := range r.Tags {
			gets = append(gets, get{key: l.k.binding(r.Repo, tag)}, get{key: l.k.prefix("rtag", r.Repo, tag), prefix: true})
		}
	}
	digests := l.k.prefix("rdig", r.Repo, string(storage.ReserveDelete))
	if r.IsDelete() {
		digests = l.k.prefix("rdig", r.Repo)
	}
	holds := len(r.Holds()) > 0
	if holds {
		gets = append(gets, get{key: digests, prefix: true})
	}
	// A delete of a manifest also holds the tags bound to it: find them
	// first, and read everything else at the same revision.
	var (
		removed   []candidate
		refPrefix string
		rev       int64
	)
	if r.RemovesTags() {
		cands, p, at, err := l.referencing(ctx, r.Repo, r.Digest, 0)
		if err != nil {
			return nil, err
		}
		refPrefix, rev = p, at
		for _, c := range cands {
			if c.found && c.current && !c.rec.Deleted && c.rec.Digest == r.Digest {
				removed = append(removed, c)
				gets = append(gets, get{key: l.k.prefix("rtag", r.Repo, c.tag), prefix: true})
			}
		}
	}
	got, rev, err := l.read(ctx, rev, gets)
	if err != nil {
		return nil, err
	}
	r.Removes = nil
	for i, c := range removed {
		holders := got[len(got)-len(removed)+i]
		for _, h := range holders {
			holder, err := l.holder(ctx, h, rev)
			if err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("reserve %s@%s (tag %s): %w", r.Repo, r.Digest, c.tag,
				&storage.BusyError{Repo: r.Repo, Tag: c.tag, Digest: holder.Digest, Holder: holder})
		}
		r.Removes = append(r.Removes, c.tag)
	}
	got = got[:len(got)-len(removed)]
	if len(got[0]) > 0 {
		return nil, fmt.Errorf("reservation %s exists: %w", r.ID, storage.ErrInvalid)
	}
	t := &txn{}
	k := l.k.reservation(r.ID)
	t.cmp(k, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
	bindingOf := func(tag string) ([]*mvccpb.KeyValue, []*mvccpb.KeyValue) {
		if !wholeRepo {
			i := 1 + 2*slices.Index(r.Tags, tag)
			return got[i], got[i+1]
		}
		bk, hp := l.k.binding(r.Repo, tag), l.k.prefix("rtag", r.Repo, tag)
		var b, h []*mvccpb.KeyValue
		for _, kv := range got[1] {
			if string(kv.Key) == bk {
				b = append(b, kv)
			}
		}
		for _, kv := range got[2] {
			if strings.HasPrefix(string(kv.Key), hp) {
				h = append(h, kv)
			}
		}
		return b, h
	}
	for _, tag := range r.Tags {
		b, holders := bindingOf(tag)
		var seen storage.Seen
		var modRev int64
		if len(b) > 0 {
			rec, err := decodeBinding(b[0])
			if err != nil {
				return nil, err
			}
			seen, modRev = rec.Seen(), b[0].ModRevision
		}
		if want := r.Expect[tag]; seen != want {
			return nil, fmt.Errorf("reserve %s:%s: %w", r.Repo, tag,
				&storage.ChangedError{Repo: r.Repo, Tag: tag, Expected: want, Actual: seen})
		}
		for _, h := range holders {
			holder, err := l.holder(ctx, h, rev)
			if err != nil {
				return nil, err
			}
			if !r.SharesTag(holder) {
				return nil, fmt.Errorf("reserve %s:%s: %w", r.Repo, tag,
					&storage.BusyError{Repo: r.Repo, Tag: tag, Digest: holder.Digest, Holder: holder})
			}
		}
		if !wholeRepo {
			bk, hp := l.k.binding(r.Repo, tag), l.k.prefix("rtag", r.Repo, tag)
			t.cmp(bk, clientv3.Compare(clientv3.ModRevision(bk), "=", modRev))
			t.cmp(hp, unchangedSince(hp, rev))
		}
	}
	if wholeRepo {
		bp, hp := l.k.prefix("b", r.Repo), l.k.prefix("rtag", r.Repo)
		t.cmp(bp, unchangedSince(bp, rev))
		t.cmp(hp, unchangedSince(hp, rev))
	}
	for _, c := range removed {
		bk, hp := l.k.binding(r.Repo, c.tag), l.k.prefix("rtag", r.Repo, c.tag)
		t.cmp(bk, clientv3.Compare(clientv3.ModRevision(bk), "=", c.modRev))
		t.cmp(hp, unchangedSince(hp, rev))
	}
	if refPrefix != "" {
		t.cmp(refPrefix, unchangedSince(refPrefix, rev))
	}
	if holds {
		others := make([]storage.Reservation, 0, len(got[len(got)-1]))
		for _, kv := range got[len(got)-1] {
			other, err := decodeReservation(kv)
			if err != nil {
				return nil, err
			}
			others = append(others, other)
		}
		for _, d := range r.Holds() {
			for _, other := range others {
				if slices.Contains(other.Holds(), d) && !r.SharesDigest(other) {
					return nil, fmt.Errorf("reserve %s@%s: %w", r.Repo, d, &storage.BusyError{Repo: r.Repo, Digest: d, Holder: other})
				}
			}
		}
		t.cmp(digests, unchangedSince(digests, rev))
	}
	return t, nil
}

// unchangedSince is the compare that no key under prefix p was created or
// changed after revision rev. Keys deleted since do not fail it: a
// reservation that went away frees what it held.
func unchangedSince(p string, rev int64) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(p), "<", rev+1).WithPrefix()
}

// holder reads the reservation a tag holder entry names, at rev.
func (l *Ledger) holder(ctx context.Context, kv *mvccpb.KeyValue, rev int64) (storage.Reservation, error) {
	id := string(kv.Value)
	resp, err := l.kv.Get(ctx, l.k.reservation(id), clientv3.WithRev(rev))
	if err != nil {
		return storage.Reservation{}, err
	}
	if len(resp.Kvs) == 0 {
		return storage.Reservation{}, fmt.Errorf("reservation %s is indexed but missing: %w", id, storage.ErrCorrupt)
	}
	return decodeReservation(resp.Kvs[0])
}

// putReservation adds r and its index entries to t: a holder entry per
// tag, and the reservation again under its repository and kind when it
// holds digests, for the conflict checks of others.
func (l *Ledger) putReservation(t *txn, r storage.Reservation) error {
	v, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode reservation %s: %w", r.ID, err)
	}
	t.put(l.k.reservation(r.ID), string(v))
	for _, tag := range uniq(r.HeldTags()) {
		t.put(l.k.reservedTag(r.Repo, tag, r.ID), r.ID)
	}
	if len(r.Holds()) > 0 {
		t.put(l.k.reservedDigests(r.Repo, string(r.Kind), r.ID), string(v))
	}
	return nil
}

// deleteReservation adds to t the deletion of r and its index entries.
func (l *Ledger) deleteReservation(t *txn, r storage.Reservation) {
	t.del(l.k.reservation(r.ID))
	for _, tag := range uniq(r.HeldTags()) {
		t.del(l.k.reservedTag(r.Repo, tag, r.ID))
	}
	if len(r.Holds()) > 0 {
		t.del(l.k.reservedDigests(r.Repo, string(r.Kind), r.ID))
	}
}

// settling is a reservation a Commit, CommitDelete or Release read: the
// transaction that settles it compares its revision, so it fails, and
// writes nothing, if the reservation was settled meanwhile.
func (l *Ledger) settling(t *txn, r storage.Reservation, modRev int64) {
	k := l.k.reservation(r.ID)
	t.cmp(k, clientv3.Compare(clientv3.ModRevision(k), "=", modRev))
	t.onFailure(clientv3.OpGet(k, clientv3.WithKeysOnly()))
	l.deleteReservation(t, r)
}

// Reservation implements storage.Ledger.
func (l *Ledger) Reservation(ctx context.Context, id string) (storage.Reservation, error) {
	ctx, cancel, err := l.bounded(ctx)
	if err != nil {
		return storage.Reservation{}, err
	}
	defer cancel()
	resp, err := l.kv.Get(ctx, l.k.reservation(id))
	if err != nil {
		return storage.Reservation{}, err
	}
	if len(resp.Kvs) == 0 {
		return storage.Reservation{}, fmt.Errorf("reservation %s: %w", id, storage.ErrNotFound)
	}
	return decodeReservation(resp.Kvs[0])
}

// Reservations implements storage.Ledger.
func (l *Ledger) Reservations(ctx context.Context) ([]storage.Reservation, error) {
	ctx, cancel, err := l.bounded(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	var out []storage.Reservation
	p := l.k.prefix("res")
	_, err = l.scan(ctx, p, end(p), 0, false, func(kv *mvccpb.KeyValue) error {
		r, err := decodeReservation(kv)
		out = append(out, r)
		return err
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b storage.Reservation) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

// uniq returns tags without repeats, in order: etcd refuses one key twice
// in a transaction, and a reservation may name a tag twice.
func uniq(tags []string) []string {
	out := make([]string, 0, len(tags))
	for _, tag := range tags {
		if !slices.Contains(out, tag) {
			out = append(out, tag)
		}
	}
	return out
}

func decodeReservation(kv *mvccpb.KeyValue) (storage.Reservation, error) {
	var r storage.Reservation
	if err := json.Unmarshal(kv.Value, &r); err != nil {
		return storage.Reservation{}, fmt.Errorf("reservation %q: %w: %w", kv.Key, storage.ErrCorrupt, err)
	}
	if r.Kind == "" {
		r.Kind = storage.ReservePush
	}
	return r, nil
}
