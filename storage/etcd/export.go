package etcd

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"

	digest "github.com/opencontainers/go-digest"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/internal/keys"
)

// importBatch is how many records Import writes per transaction: few
// enough that their compares and operations fit in one.
const importBatch = 8

// Backup implements storage.Ledger by writing the export (see Export):
// the snapshot of one revision, restored with Import into an empty prefix
// (taglock ledger import). It is the ledger's own records only, where an
// etcd snapshot (etcdctl snapshot save) would hold the whole cluster and
// restore only as a whole cluster.
func (l *Ledger) Backup(ctx context.Context, w io.Writer) (int64, error) {
	cw := &countingWriter{w: w}
	err := l.Export(ctx, cw)
	return cw.n, err
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Export implements storage.Ledger from one revision, section after
// section in key order. A compaction of that revision while the export
// runs fails it; run it again.
func (l *Ledger) Export(ctx context.Context, w io.Writer) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx) // an export may take longer than one request
	defer cancel()
	x := storage.NewExportWriter(w)
	rev, err := l.revision(ctx)
	if err != nil {
		return fmt.Errorf("export etcd ledger %s: %w", l.k, err)
	}
	sections := []struct {
		section string
		write   func(kv *mvccpb.KeyValue) error
	}{
		{"b", func(kv *mvccpb.KeyValue) error {
			rec, err := decodeBinding(kv)
			if err != nil {
				return err
			}
			if err := l.loadManifest(ctx, rev, &rec); err != nil {
				return err
			}
			return x.Binding(rec.Binding)
		}},
		{"mf", func(kv *mvccpb.KeyValue) error {
			m, err := decodeManifest(kv)
			if err != nil {
				return err
			}
			return x.Manifest(m)
		}},
		{"pull", func(kv *mvccpb.KeyValue) error {
			parts, ok := keys.Split(kv.Key[len(l.k.prefix("pull")):], 2)
			if !ok {
				return fmt.Errorf("pull key %q: %w", kv.Key, storage.ErrCorrupt)
			}
			at, err := decodePullTime(kv)
			if err != nil {
				return err
			}
			return x.Pull(storage.Pull{Repo: parts[0], Digest: digest.Digest(parts[1]), At: at})
		}},
		{"res", func(kv *mvccpb.KeyValue) error {
			r, err := decodeReservation(kv)
			if err != nil {
				return err
			}
			return x.Reservation(r)
		}},
		{"ev", func(kv *mvccpb.KeyValue) error {
			e, err := decodeEvent(kv)
			if err != nil {
				return err
			}
			return x.Event(e)
		}},
	}
	for _, s := range sections {
		p := l.k.prefix(s.section)
		if _, err := l.scan(ctx, p, end(p), rev, false, s.write); err != nil {
			return fmt.Errorf("export etcd ledger %s: %w", l.k, err)
		}
	}
	if err := x.Flush(); err != nil {
		return fmt.Errorf("export etcd ledger %s: %w", l.k, err)
	}
	return nil
}

// revision returns the cluster's current revision, linearizably.
func (l *Ledger) revision(ctx context.Context) (int64, error) {
	ctx, cancel, err := l.bounded(ctx)
	if err != nil {
		return 0, err
	}
	defer cancel()
	resp, err := l.kv.Get(ctx, l.k.meta())
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// Import implements storage.Ledger, writing importBatch (8) records per
// transaction.
func (l *Ledger) Import(ctx context.Context, r io.Reader, o storage.ImportOptions) (storage.ImportStats, error) {
	if err := ctx.Err(); err != nil {
		return storage.ImportStats{}, err
	}
	if l.readOnly {
		return storage.ImportStats{}, storage.ErrReadOnly
	}
	return storage.ImportInto(ctx, r, o, importTarget{l}, importBatch)
}

// importTarget is the ledger as storage.ImportInto writes it.
type importTarget struct{ l *Ledger }

// importView is what an import read of the ledger at one revision: every
// key its records touch, so that the transaction writing a batch can
// require that none of them changed since.
type importView struct {
	l   *Ledger
	rev int64
	// kvs holds every key read; a nil value means the key was absent.
	kvs map[string]*mvccpb.KeyValue
}

// keysOf lists the keys importing records reads: what their checks look
// at, what they replace, the pull times they compare with, and the event
// sequence.
func (l *Ledger) keysOf(records []storage.ImportRecord) []string {
	seen := map[string]bool{}
	var out []string
	add := func(k string) {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	for _, rec := range records {
		switch {
		case rec.Binding != nil:
			add(l.k.binding(rec.Binding.Repo, rec.Binding.Tag))
		case rec.Reservation != nil:
			add(l.k.reservation(rec.Reservation.ID))
			for _, tag := range rec.Reservation.Tags {
				add(l.k.binding(rec.Reservation.Repo, tag))
			}
		case rec.Event != nil:
			add(l.k.event(rec.Event.Seq))
			add(l.k.seq())
		case rec.Pull != nil:
			add(l.k.pull(rec.Pull.Repo, string(rec.Pull.Digest)))
		case rec.Manifest != nil:
			add(l.k.manifest(rec.Manifest.Repo, string(rec.Manifest.Digest)))
		}
	}
	return out
}

// view reads keys at one revision.
func (l *Ledger) view(ctx context.Context, ks []string) (*importView, error) {
	gets := make([]get, len(ks))
	for i, k := range ks {
		gets[i] = get{key: k}
	}
	got, rev, err := l.read(ctx, 0, gets)
	if err != nil {
		return nil, err
	}
	v := &importView{l: l, rev: rev, kvs: make(map[string]*mvccpb.KeyValue, len(ks))}
	for i, k := range ks {
		v.kvs[k] = nil
		if len(got[i]) > 0 {
			v.kvs[k] = got[i][0]
		}
	}
	return v, nil
}

// ViewImport implements storage.ImportTarget.
// The read may take many round trips, each bounded by the request timeout.
func (t importTarget) ViewImport(ctx context.Context, records []storage.ImportRecord, fn func(storage.ImportView) error) error {
	v, err := t.l.view(ctx, t.l.keysOf(records))
	if err != nil {
		return err
	}
	return fn(v)
}

// kv returns what the view read of key k, nil when k was absent.
func (v *importView) kv(k string) (*mvccpb.KeyValue, error) {
	kv, ok := v.kvs[k]
	if !ok {
		return nil, fmt.Errorf("import read %q, which it did not ask for", k)
	}
	return kv, nil
}

// Binding implements storage.ImportView, reading a chunked manifest at the
// view's revision.
func (v *importView) Binding(ctx context.Context, repo, tag string) (storage.Binding, bool, error) {
	kv, err := v.kv(v.l.k.binding(repo, tag))
	if err != nil || kv == nil {
		return storage.Binding{}, false, err
	}
	rec, err := decodeBinding(kv)
	if err != nil {
		return storage.Binding{}, false, err
	}
	if err := v.l.loadManifest(ctx, v.rev, &rec); err != nil {
		return storage.Binding{}, false, err
	}
	return rec.Binding, true, nil
}

// Reservation implements storage.ImportView.
func (v *importView) Reservation(_ context.Context, id string) (storage.Reservation, bool, error) {
	kv, err := v.kv(v.l.k.reservation(id))
	if err != nil || kv == nil {
		return storage.Reservation{}, false, err
	}
	r, err := decodeReservation(kv)
	return r, err == nil, err
}

// Manifest implements storage.ImportView.
func (v *importView) Manifest(_ context.Context, repo string, d digest.Digest) (storage.Manifest, bool, error) {
	kv, err := v.kv(v.l.k.manifest(repo, string(d)))
	if err != nil || kv == nil {
		return storage.Manifest{}, false, err
	}
	m, err := decodeManifest(kv)
	return m, err == nil, err
}

// Event implements storage.ImportView.
func (v *importView) Event(_ context.Context, seq uint64) (storage.Event, bool, error) {
	kv, err := v.kv(v.l.k.event(seq))
	if err != nil || kv == nil {
		return storage.Event{}, false, err
	}
	e, err := decodeEvent(kv)
	return e, err == nil, err
}

// WriteImport implements storage.ImportTarget: it reads what the records
// touch, checks them on that, and writes them in one transaction that
// requires every key read to be unchanged, the bindings' index entries and
// large manifests written ahead as Put does.
func (t importTarget) WriteImport(ctx context.Context, records []storage.ImportRecord, check func(storage.ImportView) error) error {
	l := t.l
	ctx, cancel, err := l.writable(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	var bindings []storage.Binding
	for _, rec := range records {
		if rec.Binding != nil {
			bindings = append(bindings, *rec.Binding)
		}
	}
	w := l.newWrite(bindings)
	defer w.cleanup(ctx)
	ks := l.keysOf(records)
	return retry(ctx, func() (bool, error) {
		v, err := l.view(ctx, ks)
		if err != nil {
			return false, err
		}
		if err := check(v); err != nil {
			return false, err
		}
		for _, bw := range w.bs {
			bw.old, bw.oldRev = nil, 0
			if kv := v.kvs[l.k.binding(bw.b.Repo, bw.b.Tag)]; kv != nil {
				rec, err := decodeBinding(kv)
				if err != nil {
					return false, err
				}
				bw.old, bw.oldRev = &rec, kv.ModRevision
			}
		}
		if err := w.prepare(ctx); err != nil {
			return false, err
		}
		hasEvents := slices.ContainsFunc(records, func(r storage.ImportRecord) bool { return r.Event != nil })
		if hasEvents {
			if err := l.lockSeq(ctx); err != nil {
				return false, err
			}
			defer l.unlockSeq()
		}
		before := l.seq.last
		last := before
		var applyErr error
		written := map[string]bool{}
		for _, bw := range w.bs {
			written[l.k.binding(bw.b.Repo, bw.b.Tag)] = true
		}
		extra := func(t *txn) {
			applyErr = l.applyImport(t, v, written, records, &last)
		}
		resp, err := w.commit(ctx, extra, nil, nil)
		if applyErr != nil {
			return false, applyErr
		}
		if hasEvents {
			l.committed(resp, err, numbered{last: last}, last > before)
		}
		if err != nil {
			return false, err
		}
		return resp.Succeeded, nil
	})
}

// applyImport adds to t the compares that keep v true and the writes of
// records other than bindings (write.add adds those, with the compares of
// the bindings written). last is the event sequence, moved past imported
// events.
func (l *Ledger) applyImport(t *txn, v *importView, written map[string]bool, records []storage.ImportRecord, last *uint64) error {
	for _, k := range slices.Sorted(maps.Keys(v.kvs)) {
		if k == l.k.seq() || written[k] {
			continue // the sequencer's compare below, and write.add's
		}
		if kv := v.kvs[k]; kv == nil {
			t.cmp(k, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
		} else {
			t.cmp(k, clientv3.Compare(clientv3.ModRevision(k), "=", kv.ModRevision))
		}
	}
	// Later records of a batch win over earlier ones, and etcd refuses a
	// key twice in one transaction, so the writes are gathered per key.
	var ws keyWrites
	reservations := map[string]*storage.Reservation{}
	events := map[uint64]bool{}
	seqMoved := false
	for _, rec := range records {
		switch {
		case rec.Manifest != nil:
			b, err := json.Marshal(rec.Manifest)
			if err != nil {
				return err
			}
			ws.put(l.k.manifest(rec.Manifest.Repo, string(rec.Manifest.Digest)), string(b))
		case rec.Pull != nil:
			k, val := l.k.pull(rec.Pull.Repo, string(rec.Pull.Digest)), pullValue(rec.Pull.At)
			cur, pending := ws.get(k)
			if !pending {
				if kv := v.kvs[k]; kv != nil {
					cur, pending = string(kv.Value), true
				}
			}
			if !pending || cur < val {
				ws.put(k, val)
			}
		case rec.Reservation != nil:
			r := *rec.Reservation
			old, seen := reservations[r.ID]
			if !seen {
				if kv := v.kvs[l.k.reservation(r.ID)]; kv != nil {
					o, err := decodeReservation(kv)
					if err != nil {
						return err
					}
					old = &o
				}
			}
			if old != nil {
				ws.del(l.k.reservation(old.ID))
				for _, tag := range old.Tags {
					ws.del(l.k.reservedTag(old.Repo, tag, old.ID))
				}
				if len(old.Holds()) > 0 {
					ws.del(l.k.reservedDigests(old.Repo, string(old.Kind), old.ID))
				}
			}
			var rt txn
			if err := l.putReservation(&rt, r); err != nil {
				return err
			}
			for _, op := range rt.ops {
				ws.put(string(op.KeyBytes()), string(op.ValueBytes()))
			}
			reservations[r.ID] = &r
		case rec.Event != nil:
			e := *rec.Event
			if events[e.Seq] || v.kvs[l.k.event(e.Seq)] != nil {
				continue // recorded already, identical (the check made sure)
			}
			events[e.Seq] = true
			_, puts, _, err := l.eventPuts(e, 0)
			if err != nil {
				return err
			}
			for _, p := range puts {
				ws.put(p[0], p[1])
			}
			if e.Seq > *last {
				*last, seqMoved = e.Seq, true
			}
		}
	}
	if len(events) > 0 {
		t.cmp(l.k.seq(), clientv3.Compare(clientv3.ModRevision(l.k.seq()), "=", l.seq.rev))
		t.onFailure(clientv3.OpGet(l.k.seq()))
		if seqMoved {
			ws.put(l.k.seq(), strconv.FormatUint(*last, 10))
		}
	}
	ws.addTo(t)
	return nil
}

// keyWrites gathers the writes of a transaction per key, the last write
// of a key winning.
type keyWrites struct {
	order []string
	vals  map[string]*string // nil: delete
}

func (w *keyWrites) set(k string, v *string) {
	if w.vals == nil {
		w.vals = map[string]*string{}
	}
	if _, ok := w.vals[k]; !ok {
		w.order = append(w.order, k)
	}
	w.vals[k] = v
}

func (w *keyWrites) put(k, v string) { w.set(k, &v) }
func (w *keyWrites) del(k string)    { w.set(k, nil) }

// get returns the value k is to be put with, if it is.
func (w *keyWrites) get(k string) (string, bool) {
	v, ok := w.vals[k]
	if !ok || v == nil {
		return "", false
	}
	return *v, true
}

func (w *keyWrites) addTo(t *txn) {
	for _, k := range w.order {
		if v := w.vals[k]; v != nil {
			t.put(k, *v)
		} else {
			t.del(k)
		}
	}
}
