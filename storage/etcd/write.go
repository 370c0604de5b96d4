package etcd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/internal/keys"
)

// bindingWrite is one binding a write stores, with what it replaces.
type bindingWrite struct {
	b      storage.Binding
	old    *bindingRecord // nil when the tag has no binding
	oldRev int64          // the old binding's ModRevision; 0 when none
	rec    bindingRecord  // what is stored
	// fresh is the new generation chosen for b, "" until one is needed;
	// it stays for the retries of one write.
	fresh string
	// ahead is set once fresh's index entries and chunks were written
	// ahead of the transaction; otherwise the transaction writes the
	// index entries itself.
	ahead bool
	// oldDropped is set when the transaction also deletes the index
	// entries of the generation it replaces.
	oldDropped bool
	// done is set once the binding is stored.
	done bool
}

// inlineRefs is how many index entries of new generations a write puts in
// its own transaction; beyond it, or with a chunked manifest, they are
// written ahead.
const inlineRefs = 48

// write is a write of bindings, and what is written ahead for them.
type write struct {
	l  *Ledger
	bs []*bindingWrite
	// ambiguous is set when a transaction's outcome is unknown: what was
	// written ahead may then be in use and must stay.
	ambiguous bool
}

// newWrite returns the write of bindings, the last of several for one tag
// winning.
func (l *Ledger) newWrite(bindings []storage.Binding) *write {
	w := &write{l: l}
	at := map[string]int{}
	for _, b := range bindings {
		k := b.Repo + keys.Sep + b.Tag
		if i, ok := at[k]; ok {
			w.bs[i].b = b
			continue
		}
		at[k] = len(w.bs)
		w.bs = append(w.bs, &bindingWrite{b: b})
	}
	return w
}

// read reads what the write's bindings replace, with extra gets in the
// same transaction, and returns those gets' results.
func (w *write) read(ctx context.Context, extra []get) error {
	_, err := w.readWith(ctx, extra)
	return err
}

func (w *write) readWith(ctx context.Context, extra []get) ([][]*mvccpb.KeyValue, error) {
	gets := slices.Clone(extra)
	for _, bw := range w.bs {
		gets = append(gets, get{key: w.l.k.binding(bw.b.Repo, bw.b.Tag)})
	}
	got, _, err := w.l.read(ctx, 0, gets)
	if err != nil {
		return nil, err
	}
	for i, bw := range w.bs {
		kvs := got[len(extra)+i]
		bw.old, bw.oldRev = nil, 0
		if len(kvs) > 0 {
			rec, err := decodeBinding(kvs[0])
			if err != nil {
				return nil, err
			}
			bw.old, bw.oldRev = &rec, kvs[0].ModRevision
		}
	}
	return got[:len(extra)], nil
}

// prepare decides each binding's record: a binding of the same content
// keeps its generation, another gets a new one. A new generation's index
// entries go in the write's own transaction when they are few and the
// manifest is small; otherwise they and the manifest's chunks are written
// ahead, once per write.
func (w *write) prepare(ctx context.Context) error {
	refs := 0
	for _, bw := range w.bs {
		if bw.old == nil || !sameContent(*bw.old, bw.b) {
			refs += len(bw.b.RefDigests())
		}
	}
	for _, bw := range w.bs {
		b := bw.b
		if bw.old != nil && sameContent(*bw.old, b) {
			bw.rec = bindingRecord{Binding: b, Gen: bw.old.Gen, Chunks: bw.old.Chunks,
				ManifestSize: bw.old.ManifestSize, ManifestSHA256: bw.old.ManifestSHA256}
		} else {
			if bw.fresh == "" {
				gen, err := newGen()
				if err != nil {
					return err
				}
				bw.fresh = gen
			}
			if !bw.ahead && (refs > inlineRefs || len(b.Manifest) > inlineManifest) {
				if err := w.l.writeAhead(ctx, b, bw.fresh); err != nil {
					return err
				}
				bw.ahead = true
			}
			bw.rec = bindingRecord{Binding: b, Gen: bw.fresh}
			if len(b.Manifest) > inlineManifest {
				sum := sha256.Sum256(b.Manifest)
				bw.rec.Chunks = (len(b.Manifest) + chunkSize - 1) / chunkSize
				bw.rec.ManifestSize, bw.rec.ManifestSHA256 = len(b.Manifest), hex.EncodeToString(sum[:])
			}
		}
		if bw.rec.Chunks > 0 {
			bw.rec.Manifest = nil
		}
	}
	return nil
}

// sameContent reports whether b indexes and holds the manifest exactly as
// old does, so that it can keep old's generation.
func sameContent(old bindingRecord, b storage.Binding) bool {
	if old.Digest != b.Digest || !slices.Equal(old.Closure, b.Closure) {
		return false
	}
	if old.Chunks == 0 {
		return len(b.Manifest) <= inlineManifest && bytes.Equal(old.Manifest, b.Manifest)
	}
	sum := sha256.Sum256(b.Manifest)
	return len(b.Manifest) > inlineManifest && len(b.Manifest) == old.ManifestSize && hex.EncodeToString(sum[:]) == old.ManifestSHA256
}

// add adds the write's bindings to t: each compared with what was read and
// stored, with its repository key when it is the tag's first binding and
// without the chunks of the generation it replaces.
func (w *write) add(t *txn) error {
	repos := map[string]bool{}
	for _, bw := range w.bs {
		k := w.l.k.binding(bw.b.Repo, bw.b.Tag)
		v, err := json.Marshal(bw.rec)
		if err != nil {
			return fmt.Errorf("encode binding %s:%s: %w", bw.b.Repo, bw.b.Tag, err)
		}
		t.cmp(k, clientv3.Compare(clientv3.ModRevision(k), "=", bw.oldRev))
		t.put(k, string(v))
		if bw.old == nil && !repos[bw.b.Repo] {
			repos[bw.b.Repo] = true
			t.put(w.l.k.repo(bw.b.Repo), "")
		} else if bw.old != nil && bw.old.Gen != bw.rec.Gen && bw.old.Chunks > 0 {
			t.delPrefix(w.l.k.chunks(bw.old.Repo, bw.old.Tag, bw.old.Gen))
		}
		if bw.rec.Gen == bw.fresh && !bw.ahead {
			for _, d := range bw.b.RefDigests() {
				t.put(w.l.k.ref(bw.b.Repo, string(d), bw.b.Tag, bw.fresh), "")
			}
		}
	}
	return nil
}

// dropOld adds to t, as far as they fit, the deletion of the index entries
// of the generations the write's bindings replace.
func (w *write) dropOld(t *txn) {
	for _, bw := range w.bs {
		bw.oldDropped = false
		if bw.old == nil || bw.old.Gen == bw.rec.Gen {
			continue
		}
		refs := bw.old.RefDigests()
		if !t.fits(len(refs), 256*len(refs)) {
			continue
		}
		for _, d := range refs {
			t.del(w.l.k.ref(bw.old.Repo, string(d), bw.old.Tag, bw.old.Gen))
		}
		bw.oldDropped = true
	}
}

// stored notes that the write's bindings are stored and removes, as far
// as it can, the index entries of the generations they replaced. Entries
// it cannot remove are harmless: Referencing ignores entries of other
// generations than the binding's.
func (w *write) stored(ctx context.Context) {
	for _, bw := range w.bs {
		bw.done = true
		if bw.old != nil && bw.old.Gen != bw.rec.Gen && !bw.oldDropped {
			w.l.dropGen(ctx, bw.old.Repo, bw.old.Tag, bw.old.Gen, bw.old.RefDigests(), false)
		}
	}
}

// cleanup removes what was written ahead for bindings the write did not
// store. It must only run once the write is known to have failed, or
// stored them.
func (w *write) cleanup(ctx context.Context) {
	if w.ambiguous {
		return
	}
	for _, bw := range w.bs {
		if bw.ahead && (!bw.done || bw.rec.Gen != bw.fresh) {
			w.l.dropGen(context.WithoutCancel(ctx), bw.b.Repo, bw.b.Tag, bw.fresh, bw.b.RefDigests(), true)
		}
	}
}

// commit sends the write as one transaction: extra's compares and
// operations (a reservation's, say), the bindings, then as many of events
// and manifests as fit, numbered and compared against the seq key. What
// does not fit follows in transactions of its own once the write is
// stored; events that then fail are logged and counted, never the
// bindings. It returns the response, whose else branch holds extra's
// reads when the compares failed. An error means the outcome is unknown.
func (w *write) commit(ctx context.Context, extra func(*txn), events []storage.Event, manifests []storage.Manifest) (*clientv3.TxnResponse, error) {
	l := w.l
	var t txn
	if extra != nil {
		extra(&t)
	}
	if err := w.add(&t); err != nil {
		return nil, err
	}
	var (
		n     numbered
		later []storage.Event
	)
	if len(events) > 0 {
		if err := l.lockSeq(ctx); err != nil {
			return nil, err
		}
		var err error
		if n, later, err = l.addEvents(&t, events, false); err != nil {
			l.unlockSeq()
			return nil, err
		}
	}
	// A manifest given twice is recorded once, as given last: etcd
	// refuses a key twice in one transaction.
	last := map[string]int{}
	for i, m := range manifests {
		last[l.k.manifest(m.Repo, string(m.Digest))] = i
	}
	var laterManifests []storage.Manifest
	for i, m := range manifests {
		if last[l.k.manifest(m.Repo, string(m.Digest))] != i {
			continue
		}
		k := l.k.manifest(m.Repo, string(m.Digest))
		v, err := json.Marshal(m)
		if err != nil {
			if len(events) > 0 {
				l.unlockSeq()
			}
			return nil, fmt.Errorf("encode manifest %s@%s: %w", m.Repo, m.Digest, err)
		}
		if len(laterManifests) > 0 || !t.fits(1, len(k)+len(v)) {
			laterManifests = append(laterManifests, m)
			continue
		}
		t.put(k, string(v))
	}
	w.dropOld(&t)
	resp, err := t.commit(ctx, l.kv)
	if len(events) > 0 {
		l.committed(resp, err, n, len(n.events) > 0)
		l.unlockSeq()
	}
	if err != nil {
		w.ambiguous = true
		return nil, err
	}
	if !resp.Succeeded {
		return resp, nil
	}
	w.stored(ctx)
	for _, m := range laterManifests {
		if err := l.PutManifest(context.WithoutCancel(ctx), m); err != nil {
			l.log.Warn().Err(err).Str("repo", m.Repo).Str("digest", m.Digest.String()).
				Msg("ledger: manifest record not written after its binding; it is learned again when next needed")
		}
	}
	l.appendLater(ctx, later)
	return resp, nil
}

// missing reports whether the else branch of a failed transaction found
// no key k.
func missing(resp *clientv3.TxnResponse, k string) bool {
	for _, r := range resp.Responses {
		rr := r.GetResponseRange()
		if rr == nil {
			continue
		}
		if len(rr.Kvs) > 0 && string(rr.Kvs[0].Key) == k {
			return false
		}
	}
	return true
}
