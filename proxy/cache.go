package proxy

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// CacheOptions configures the answers to manifest reads that taglock gives
// from what it holds, without the upstream.
type CacheOptions struct {
	// Size bounds the manifest bytes held in memory. Zero turns held
	// answers off: every read goes to the upstream.
	Size int64
	// ConfirmTTL, when not zero, says the upstream is the gate for pulls
	// (upstream.auth passthrough): a held answer goes only to a caller
	// whose credentials the upstream answered a pull of the same
	// repository for with a 2xx, less than ConfirmTTL ago. Zero says
	// taglock is the gate: its own access rules, which run before any
	// answer, decide alone.
	ConfirmTTL time.Duration
}

// DefaultCacheSize is the manifest bytes held in memory by default.
const DefaultCacheSize = 32 << 20

// maxConfirmations bounds the remembered (credential, repository) pairs.
const maxConfirmations = 1 << 16

// manifestCache answers GET and HEAD of a manifest by immutable tag, or by
// the digest of content a live immutable tag holds, from the ledger and
// the manifest bytes it holds: nothing an answer depends on can change, so
// the upstream need not be asked. The ledger is read on every request, so
// a tombstone, a retention delete or a change of mode takes effect at
// once; only the bytes are kept in memory, under their repository and
// digest: the ledger can say a repository references a digest the
// registry never let into it as a manifest (a layer with URLs, an index
// child the registry did not require), so bytes learned in one
// repository never answer a read of another.
//
// It answers only what it is sure of and leaves everything else to the
// upstream: mutable and warn-mode tags, a tag or digest no live immutable
// binding holds, a client that does not accept the manifest's media type,
// and, when the upstream is the gate, a caller the upstream has not
// recently let pull the repository.
type manifestCache struct {
	ledger  Ledger
	states  states
	read    reader
	metrics *Metrics
	now     func() time.Time

	bytes   *lru
	fetches singleflight.Group

	confirmTTL time.Duration
	mu         sync.Mutex
	confirmed  map[confirmKey]time.Time // until when
}

// confirmKey is one credential's permission to pull one repository; the
// credential is kept only as a hash.
type confirmKey struct {
	repo string
	cred [sha256.Size]byte
}

func newManifestCache(o CacheOptions, p parts, ledger Ledger, m *Metrics, now func() time.Time) *manifestCache {
	if o.Size <= 0 {
		return nil
	}
	return &manifestCache{ledger: ledger, states: p.states, read: p.read, metrics: m, now: now,
		bytes: newLRU(o.Size), confirmTTL: o.ConfirmTTL, confirmed: map[confirmKey]time.Time{}}
}

// heldManifest is a manifest's bytes and media type.
type heldManifest struct {
	body      []byte
	mediaType string
}

// serve answers the manifest read rt from what taglock holds, and reports
// whether it did. When it did not, nothing was written and the caller
// forwards the request; pin, when not "", is the recorded digest of the
// immutable tag rt names, which the caller asks the upstream for instead
// of the tag, so that the answer is the one the cache gives once the
// upstream has confirmed the caller.
func (c *manifestCache) serve(w http.ResponseWriter, r *http.Request, rt Route) (answered bool, pin digest.Digest) {
	ctx := r.Context()
	d, held, ok := c.lookup(ctx, rt)
	if !ok {
		c.metrics.cached("bypass")
		return false, ""
	}
	if c.confirmTTL > 0 && !c.isConfirmed(r, rt.Name) {
		c.metrics.cached("confirm")
		return false, d
	}
	m, ok := c.bytes.get(heldKey{rt.Name, d})
	if !ok {
		if m, ok = c.fill(ctx, r.Header, rt.Name, d, held); !ok {
			c.metrics.cached("bypass")
			return false, ""
		}
	}
	if !accepts(r.Header, m.mediaType) {
		c.metrics.cached("bypass")
		return false, ""
	}
	c.metrics.cached("hit")
	etag := `"` + d.String() + `"`
	h := w.Header()
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Docker-Distribution-Api-Version", "registry/2.0")
	h.Set("Etag", etag)
	if etagMatches(r.Header, etag) {
		w.WriteHeader(http.StatusNotModified)
		return true, ""
	}
	h.Set("Content-Type", m.mediaType)
	h.Set("Content-Length", strconv.Itoa(len(m.body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(m.body)
	}
	return true, ""
}

// lookup says which digest the read names, when a live immutable binding
// of rt.Name holds it, and that binding. Any doubt, a ledger error
// included, leaves the read to the upstream.
func (c *manifestCache) lookup(ctx context.Context, rt Route) (digest.Digest, storage.Binding, bool) {
	if rt.Tag != "" {
		st, err := c.states.read(ctx, rt.Name, rt.Tag)
		if err != nil || !st.found || st.mode != policy.Immutable || st.current.Deleted {
			return "", storage.Binding{}, false
		}
		return st.current.Digest, st.current, true
	}
	bs, err := c.ledger.Referencing(ctx, rt.Name, rt.Digest)
	if err != nil {
		return "", storage.Binding{}, false
	}
	for _, b := range bs {
		if !b.Deleted && c.states.of(rt.Name, b.Tag, &b).mode == policy.Immutable {
			return rt.Digest, b, true
		}
	}
	return "", storage.Binding{}, false
}

// fill finds the bytes of d: the binding's own, when it is d's binding and
// kept them, or else the upstream's, fetched once however many readers
// ask at the same time. Bytes that do not hash to d are never kept.
func (c *manifestCache) fill(ctx context.Context, h http.Header, repo string, d digest.Digest, b storage.Binding) (heldManifest, bool) {
	if b.Digest == d && len(b.Manifest) > 0 && d.Algorithm().Available() && d.Algorithm().FromBytes(b.Manifest) == d {
		mt := b.MediaType
		if mt == "" {
			mt = declaredMediaType(b.Manifest)
		}
		if mt != "" {
			m := heldManifest{body: b.Manifest, mediaType: mt}
			c.keep(heldKey{repo, d}, m)
			return m, true
		}
	}
	v, err, _ := c.fetches.Do(repo+"@"+d.String(), func() (any, error) {
		// The fetch outlives a reader that gives up: others may wait on it.
		body, mt, found, err := c.read.manifest(context.WithoutCancel(ctx), h, repo, d.String())
		switch {
		case err != nil:
			return nil, err
		case !found:
			return nil, errNotHeld
		case !d.Algorithm().Available() || d.Algorithm().FromBytes(body) != d:
			return nil, errNotHeld
		}
		if parsed, _, err := mime.ParseMediaType(mt); err == nil {
			mt = parsed
		}
		if mt == "" {
			mt = declaredMediaType(body)
		}
		if mt == "" {
			return nil, errNotHeld
		}
		m := heldManifest{body: body, mediaType: mt}
		c.keep(heldKey{repo, d}, m)
		return m, nil
	})
	if err != nil {
		return heldManifest{}, false
	}
	return v.(heldManifest), true
}

// keep holds m, whose bytes hash to k.d and are a manifest of k.repo, in
// memory.
func (c *manifestCache) keep(k heldKey, m heldManifest) {
	c.bytes.add(k, m)
	c.metrics.cached("fill")
	c.metrics.cacheBytes(c.bytes.used())
}

var errNotHeld = errors.New("manifest not held")

// declaredMediaType is the mediaType field of a manifest, or "".
func declaredMediaType(body []byte) string {
	var m struct {
		MediaType string `json:"mediaType"`
	}
	_ = json.Unmarshal(body, &m)
	return m.MediaType
}

// accepts reports whether the request's Accept headers name mediaType
// itself. Wildcards and a missing Accept are left to the upstream, whose
// answer to them depends on the registry.
func accepts(h http.Header, mediaType string) bool {
	for _, v := range h.Values("Accept") {
		for part := range strings.SplitSeq(v, ",") {
			t, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil || !strings.EqualFold(t, mediaType) {
				continue
			}
			if q, ok := params["q"]; ok {
				if f, err := strconv.ParseFloat(q, 64); err != nil || f <= 0 {
					continue
				}
			}
			return true
		}
	}
	return false
}

// etagMatches reports whether If-None-Match names etag, as Distribution
// compares it.
func etagMatches(h http.Header, etag string) bool {
	for _, v := range h.Values("If-None-Match") {
		for part := range strings.SplitSeq(v, ",") {
			part = strings.TrimSpace(part)
			if part == etag || `"`+part+`"` == etag {
				return true
			}
		}
	}
	return false
}

// observe learns from the upstream's answer to a forwarded pull: a 2xx to
// GET or HEAD of a manifest or blob confirms that the request's credential
// may pull the repository, for ConfirmTTL. Nothing else is remembered; a
// refusal in particular never is.
func (c *manifestCache) observe(r *http.Request, rt Route, status int) {
	if c == nil || c.confirmTTL <= 0 || status/100 != 2 ||
		r.Method != http.MethodGet && r.Method != http.MethodHead ||
		rt.Kind != KindManifest && rt.Kind != KindBlob {
		return
	}
	k := c.key(r, rt.Name)
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.confirmed) >= maxConfirmations {
		for k, until := range c.confirmed {
			if !now.Before(until) {
				delete(c.confirmed, k)
			}
		}
		if len(c.confirmed) >= maxConfirmations {
			clear(c.confirmed) // costs only re-confirmation
		}
	}
	c.confirmed[k] = now.Add(c.confirmTTL)
}

// isConfirmed reports whether the upstream let the request's credential
// pull repo less than ConfirmTTL ago.
func (c *manifestCache) isConfirmed(r *http.Request, repo string) bool {
	k := c.key(r, repo)
	c.mu.Lock()
	defer c.mu.Unlock()
	until, ok := c.confirmed[k]
	return ok && c.now().Before(until)
}

// key hashes everything the upstream could tell callers apart by: the
// Authorization header, and the client certificate when there is one.
func (c *manifestCache) key(r *http.Request, repo string) confirmKey {
	h := sha256.New()
	h.Write([]byte(r.Header.Get("Authorization")))
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		h.Write([]byte{0})
		h.Write(r.TLS.PeerCertificates[0].Raw)
	}
	k := confirmKey{repo: repo}
	h.Sum(k.cred[:0])
	return k
}

// heldKey is a manifest of one repository.
type heldKey struct {
	repo string
	d    digest.Digest
}

// lru holds manifests by repository and digest, least recently used first
// out, within a byte budget.
type lru struct {
	mu    sync.Mutex
	max   int64
	size  int64
	order *list.List // of *lruEntry, most recent at the front
	items map[heldKey]*list.Element
}

type lruEntry struct {
	k heldKey
	m heldManifest
}

// lruOverhead is what one entry costs besides its bytes, roughly.
const lruOverhead = 256

func newLRU(max int64) *lru {
	return &lru{max: max, order: list.New(), items: map[heldKey]*list.Element{}}
}

func (l *lru) get(k heldKey) (heldManifest, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.items[k]
	if !ok {
		return heldManifest{}, false
	}
	l.order.MoveToFront(e)
	return e.Value.(*lruEntry).m, true
}

// add keeps m under k, evicting the least recently used entries to make
// room. A manifest larger than an eighth of the budget is not kept: it
// would evict too much for one entry.
func (l *lru) add(k heldKey, m heldManifest) {
	cost := int64(len(m.body)) + lruOverhead
	if cost > l.max/8 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.items[k]; ok {
		l.order.MoveToFront(e)
		return
	}
	l.items[k] = l.order.PushFront(&lruEntry{k: k, m: m})
	l.size += cost
	for l.size > l.max {
		last := l.order.Back()
		ent := last.Value.(*lruEntry)
		l.order.Remove(last)
		delete(l.items, ent.k)
		l.size -= int64(len(ent.m.body)) + lruOverhead
	}
}

// used is the bytes held, overhead included.
func (l *lru) used() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size
}
