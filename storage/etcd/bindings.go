package etcd

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	digest "github.com/opencontainers/go-digest"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/internal/keys"
)

// Manifests larger than inlineManifest are kept out of the binding's own
// value, in chunks of at most chunkSize bytes: a binding must fit in the
// transaction that commits it, and etcd refuses requests over 1.5 MiB by
// default, while a manifest may be 4 MiB.
const (
	inlineManifest = 64 << 10
	chunkSize      = 512 << 10
)

// bindingRecord is a binding as stored.
type bindingRecord struct {
	storage.Binding
	// Gen names the generation of the binding's index entries and
	// manifest chunks, which are written before the transaction that
	// stores the binding. A write that changes the binding's digest,
	// closure or manifest starts a new generation; one that changes only
	// its mode, tombstone or first push keeps it.
	Gen string `json:"gen"`
	// Chunks is how many chunk keys hold the manifest; 0 when Manifest is
	// inline.
	Chunks int `json:"chunks,omitempty"`
	// ManifestSize and ManifestSHA256 describe the chunked manifest.
	ManifestSize   int    `json:"manifestSize,omitempty"`
	ManifestSHA256 string `json:"manifestSha256,omitempty"`
}

// Binding implements storage.Ledger with one linearizable read (two when
// the manifest is chunked).
func (l *Ledger) Binding(ctx context.Context, repo, tag string) (storage.Binding, error) {
	ctx, cancel, err := l.bounded(ctx)
	if err != nil {
		return storage.Binding{}, err
	}
	defer cancel()
	resp, err := l.kv.Get(ctx, l.k.binding(repo, tag))
	if err != nil {
		return storage.Binding{}, err
	}
	if len(resp.Kvs) == 0 {
		return storage.Binding{}, fmt.Errorf("binding %s:%s: %w", repo, tag, storage.ErrNotFound)
	}
	rec, err := decodeBinding(resp.Kvs[0])
	if err != nil {
		return storage.Binding{}, err
	}
	if err := l.loadManifest(ctx, resp.Header.Revision, &rec); err != nil {
		return storage.Binding{}, err
	}
	return rec.Binding, nil
}

// Bindings implements storage.Ledger from one revision.
func (l *Ledger) Bindings(ctx context.Context, repo string) ([]storage.Binding, error) {
	return l.BindingsAfter(ctx, repo, "", 0)
}

// BindingsAfter implements storage.Ledger from one revision, reading from
// the key after repo:after.
func (l *Ledger) BindingsAfter(ctx context.Context, repo, after string, limit int) ([]storage.Binding, error) {
	ctx, cancel, err := l.bounded(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	var out []storage.Binding
	p := l.k.prefix("b", repo)
	start := p
	if after != "" {
		start = l.k.binding(repo, after) + "\x00" // the first key past repo:after
	}
	var recs []bindingRecord
	rev, err := l.scanN(ctx, start, end(p), 0, false, limit, func(kv *mvccpb.KeyValue) error {
		rec, err := decodeBinding(kv)
		recs = append(recs, rec)
		return err
	})
	if err != nil {
		return nil, err
	}
	for i := range recs {
		if err := l.loadManifest(ctx, rev, &recs[i]); err != nil {
			return nil, err
		}
		out = append(out, recs[i].Binding)
	}
	return out, nil
}

// Repositories implements storage.Ledger.
func (l *Ledger) Repositories(ctx context.Context) ([]string, error) {
	return l.RepositoriesAfter(ctx, "", 0)
}

// RepositoriesAfter implements storage.Ledger from the repo/ keys, one per
// repository with a binding.
func (l *Ledger) RepositoriesAfter(ctx context.Context, after string, limit int) ([]string, error) {
	ctx, cancel, err := l.bounded(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	var out []string
	p := l.k.prefix("repo")
	start := p
	if after != "" {
		start = l.k.repo(after) + "\x00" // the first key past after's
	}
	_, err = l.scanN(ctx, start, end(p), 0, true, limit, func(kv *mvccpb.KeyValue) error {
		out = append(out, string(kv.Key[len(p):]))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Counts implements storage.Ledger by reading every binding of the ledger,
// or of repo, at one revision: this backend keeps no counts in its writes
// (see the package doc), so a count of the whole ledger costs a read of
// every binding. The read takes many round trips, each bounded by the
// request timeout.
func (l *Ledger) Counts(ctx context.Context, repo string) (storage.Counts, error) {
	if err := ctx.Err(); err != nil {
		return storage.Counts{}, err
	}
	p := l.k.prefix("b")
	if repo != "" {
		p = l.k.prefix("b", repo)
	}
	var c storage.Counts
	last, section := "", len(l.k.prefix("b"))
	_, err := l.scan(ctx, p, end(p), 0, false, func(kv *mvccpb.KeyValue) error {
		repo, _, _ := strings.Cut(string(kv.Key[section:]), keys.Sep)
		if !c.AddJSON(kv.Value) {
			return fmt.Errorf("binding %q: %w", kv.Key, storage.ErrCorrupt)
		}
		if repo != last {
			last = repo
			c.Repositories++
		}
		return nil
	})
	if err != nil {
		return storage.Counts{}, err
	}
	return c, nil
}

// Referencing implements storage.Ledger with the ref/ index: it reads the
// index entries of d, then the bindings they name at the same revision,
// and keeps those whose generation wrote the entry.
func (l *Ledger) Referencing(ctx context.Context, repo string, d digest.Digest) ([]storage.Binding, error) {
	ctx, cancel, err := l.bounded(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	recs, _, rev, err := l.referencing(ctx, repo, d, 0)
	if err != nil {
		return nil, err
	}
	var out []storage.Binding
	for _, r := range recs {
		if !r.current {
			continue
		}
		if err := l.loadManifest(ctx, rev, &r.rec); err != nil {
			return nil, err
		}
		out = append(out, r.rec.Binding)
	}
	return out, nil
}

// candidate is a binding an index entry names, with its revision and
// whether the generation that wrote the entry is the binding's current one.
type candidate struct {
	tag     string
	rec     bindingRecord
	found   bool
	modRev  int64
	current bool
}

// referencing reads the ref/ entries of repo@d and the bindings they
// name, in tag order, at rev (0: now). It returns them and the revision.
func (l *Ledger) referencing(ctx context.Context, repo string, d digest.Digest, rev int64) ([]candidate, string, int64, error) {
	p := l.k.prefix("ref", repo, string(d))
	gens := map[string][]string{}
	var tags []string
	rev, err := l.scan(ctx, p, end(p), rev, true, func(kv *mvccpb.KeyValue) error {
		parts, ok := keys.Split(kv.Key[len(p):], 2)
		if !ok {
			return fmt.Errorf("index key %q: %w", kv.Key, storage.ErrCorrupt)
		}
		if _, seen := gens[parts[0]]; !seen {
			tags = append(tags, parts[0])
		}
		gens[parts[0]] = append(gens[parts[0]], parts[1])
		return nil
	})
	if err != nil {
		return nil, p, 0, err
	}
	gets := make([]get, len(tags))
	for i, tag := range tags {
		gets[i] = get{key: l.k.binding(repo, tag)}
	}
	got, _, err := l.read(ctx, rev, gets)
	if err != nil {
		return nil, p, 0, err
	}
	out := make([]candidate, len(tags))
	for i, tag := range tags {
		out[i].tag = tag
		if len(got[i]) == 0 {
			continue
		}
		rec, err := decodeBinding(got[i][0])
		if err != nil {
			return nil, p, 0, err
		}
		out[i] = candidate{tag: tag, rec: rec, found: true, modRev: got[i][0].ModRevision, current: slices.Contains(gens[tag], rec.Gen)}
	}
	return out, p, rev, nil
}

// Put implements storage.Ledger with one transaction, after writing the
// bindings' index entries and large manifests.
func (l *Ledger) Put(ctx context.Context, bindings []storage.Binding, events []storage.Event) error {
	bindings, err := storage.NormalizeBindings(bindings)
	if err != nil {
		return err
	}
	if err := storage.ValidateEvents(events); err != nil {
		return err
	}
	ctx, cancel, err := l.writable(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	w := l.newWrite(bindings)
	defer w.cleanup(ctx)
	return retry(ctx, func() (bool, error) {
		if err := w.read(ctx, nil); err != nil {
			return false, err
		}
		if err := w.prepare(ctx); err != nil {
			return false, err
		}
		resp, err := w.commit(ctx, nil, events, nil)
		if err != nil {
			return false, err
		}
		return resp.Succeeded, nil
	})
}

// decodeBinding decodes a binding record.
func decodeBinding(kv *mvccpb.KeyValue) (bindingRecord, error) {
	var rec bindingRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return bindingRecord{}, fmt.Errorf("binding %q: %w: %w", kv.Key, storage.ErrCorrupt, err)
	}
	return rec, nil
}

// loadManifest reads the chunks of rec's manifest at rev, when it has any.
func (l *Ledger) loadManifest(ctx context.Context, rev int64, rec *bindingRecord) error {
	if rec.Chunks == 0 {
		return nil
	}
	p := l.k.chunks(rec.Repo, rec.Tag, rec.Gen)
	buf := make([]byte, 0, rec.ManifestSize)
	n := 0
	_, err := l.scan(ctx, p, end(p), rev, false, func(kv *mvccpb.KeyValue) error {
		n++
		buf = append(buf, kv.Value...)
		return nil
	})
	if err != nil {
		return err
	}
	if sum := sha256.Sum256(buf); n != rec.Chunks || len(buf) != rec.ManifestSize || hex.EncodeToString(sum[:]) != rec.ManifestSHA256 {
		return fmt.Errorf("manifest of %s:%s: %d chunks of %d bytes, want %d of %d with sha256 %s: %w",
			rec.Repo, rec.Tag, n, len(buf), rec.Chunks, rec.ManifestSize, rec.ManifestSHA256, storage.ErrCorrupt)
	}
	rec.Manifest = buf
	return nil
}

// writeAhead writes generation gen's index entries for b and, when b's
// manifest is too large to keep inline, its chunks.
func (l *Ledger) writeAhead(ctx context.Context, b storage.Binding, gen string) error {
	var t txn
	flush := func() error {
		if len(t.ops) == 0 {
			return nil
		}
		_, err := t.commit(ctx, l.kv)
		t = txn{}
		return err
	}
	for _, d := range b.RefDigests() {
		k := l.k.ref(b.Repo, string(d), b.Tag, gen)
		if !t.fits(1, len(k)) {
			if err := flush(); err != nil {
				return err
			}
		}
		t.put(k, "")
	}
	if len(b.Manifest) > inlineManifest {
		for i := 0; i*chunkSize < len(b.Manifest); i++ {
			part := b.Manifest[i*chunkSize : min((i+1)*chunkSize, len(b.Manifest))]
			k := l.k.chunk(b.Repo, b.Tag, gen, i)
			if !t.fits(1, len(k)+len(part)) {
				if err := flush(); err != nil {
					return err
				}
			}
			t.put(k, string(part))
		}
	}
	return flush()
}

// dropGen deletes generation gen's index entries for refs and, with
// chunks, its manifest chunks. It logs what it could not delete.
func (l *Ledger) dropGen(ctx context.Context, repo, tag, gen string, refs []digest.Digest, chunks bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.timeout)
	defer cancel()
	var t txn
	flush := func() {
		if len(t.ops) == 0 {
			return
		}
		if _, err := t.commit(ctx, l.kv); err != nil {
			l.log.Warn().Err(err).Str("repo", repo).Str("tag", tag).Str("generation", gen).
				Msg("ledger: could not remove index entries of a replaced binding; Referencing ignores them")
		}
		t = txn{}
	}
	for _, d := range refs {
		if !t.fits(1, 256) {
			flush()
		}
		t.del(l.k.ref(repo, string(d), tag, gen))
	}
	if chunks {
		t.delPrefix(l.k.chunks(repo, tag, gen))
	}
	flush()
}

// newGen returns a new generation name: 8 random bytes, hex encoded.
func newGen() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("binding generation: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}
