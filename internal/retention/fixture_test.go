package retention

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/proxy/embedded"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

// fixture is taglock's proxy over an embedded registry and a bolt ledger,
// sharing one clock with the runners it builds. Pushes go through the
// proxy, so the ledger records them as a client's push would.
type fixture struct {
	ledger *faultyLedger
	proxy  *proxy.Server
	up     http.Handler // the embedded registry, straight
	root   string       // the embedded registry's filesystem storage

	mu   sync.Mutex
	skew time.Duration // the clock: the real time (the proxy's waits and deadlines read it) plus skew
}

// newFixture starts a fixture whose tags matching build-*, pr-* and
// multi* are mutable and every other tag immutable (the default).
func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	reg, err := embedded.New(context.Background(), embedded.Options{Root: filepath.Join(dir, "registry")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Shutdown() })
	l, err := bolt.Open(filepath.Join(dir, "ledger.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	f := &fixture{ledger: &faultyLedger{Ledger: l}, up: reg.Handler(), root: filepath.Join(dir, "registry", "data")}
	f.proxy = proxy.New(proxy.Options{Upstream: proxy.NewInProcess(reg.Handler()), Ledger: f.ledger,
		Immutability: immutability(), Now: f.clock, ReserveWait: 50 * time.Millisecond})
	return f
}

func immutability() policy.Immutability {
	im := policy.DefaultImmutability()
	im.Rules = append(im.Rules, policy.Rule{Tags: policy.Globs{policy.MustGlob("build-*"), policy.MustGlob("pr-*"), policy.MustGlob("multi*")},
		Mode: policy.Mutable})
	return im
}

func (f *fixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return time.Now().UTC().Add(f.skew)
}

// advance moves the clock on by d.
func (f *fixture) advance(d time.Duration) {
	f.mu.Lock()
	f.skew += d
	f.mu.Unlock()
}

// runner returns a Runner applying pol to the fixture, with the fixture's
// clock, ledger and proxy.
func (f *fixture) runner(pol policy.Retention, opts ...func(*Options)) *Runner {
	o := Options{Policy: pol, Immutability: immutability(), Ledger: f.ledger, Upstream: f.proxy.Drift(), Now: f.clock}
	for _, fn := range opts {
		fn(&o)
	}
	return New(o)
}

// retain returns a retention configuration with one policy governing
// every repository, keeping what keep says and deleting untagged
// manifests after grace (1ns, the shortest there is, when zero).
func retain(grace time.Duration, keep ...policy.KeepRule) policy.Retention {
	if grace == 0 {
		grace = time.Nanosecond
	}
	return policy.Retention{Policies: []policy.RetentionPolicy{{
		Repositories: policy.Globs{policy.MustGlob("**")}, Keep: keep,
		Untagged: policy.UntaggedDelete, UntaggedGrace: grace,
	}}}
}

func tags(patterns ...string) policy.KeepRule {
	var gs policy.Globs
	for _, p := range patterns {
		gs = append(gs, policy.MustGlob(p))
	}
	return policy.KeepRule{Tags: gs}
}

// request sends one request to h and returns the recorder.
func request(h http.Handler, method, path, contentType string, body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", v1.MediaTypeImageManifest+", "+v1.MediaTypeImageIndex)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// blob uploads b to repo on the upstream.
func (f *fixture) blob(t *testing.T, repo string, b []byte, mediaType string) v1.Descriptor {
	t.Helper()
	d := digest.FromBytes(b)
	rec := request(f.up, http.MethodPost, "/v2/"+repo+"/blobs/uploads/", "", nil)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("start upload to %s: %d %s", repo, rec.Code, rec.Body)
	}
	loc, err := url.Parse(rec.Header().Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	q := loc.Query()
	q.Set("digest", d.String())
	if rec := request(f.up, http.MethodPut, loc.Path+"?"+q.Encode(), "application/octet-stream", b); rec.Code != http.StatusCreated {
		t.Fatalf("upload blob to %s: %d %s", repo, rec.Code, rec.Body)
	}
	return v1.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}
}

// image uploads a one-layer image whose layer is content and returns its
// manifest, not pushed yet.
func (f *fixture) image(t *testing.T, repo, content string) []byte {
	t.Helper()
	cfg := f.blob(t, repo, []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`), v1.MediaTypeImageConfig)
	layer := f.blob(t, repo, []byte(content), v1.MediaTypeImageLayer)
	m, err := json.Marshal(v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: []v1.Descriptor{layer}})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// put pushes manifest m as repo:ref through taglock, a minute after the
// previous push, and returns its digest.
func (f *fixture) put(t *testing.T, repo, ref string, m []byte) digest.Digest {
	t.Helper()
	var mt struct{ MediaType string }
	_ = json.Unmarshal(m, &mt)
	f.advance(time.Minute)
	if rec := request(f.proxy, http.MethodPut, "/v2/"+repo+"/manifests/"+ref, mt.MediaType, m); rec.Code != http.StatusCreated {
		t.Fatalf("push %s:%s: %d %s", repo, ref, rec.Code, rec.Body)
	}
	return digest.FromBytes(m)
}

// push pushes a one-layer image whose layer is content as repo:tag.
func (f *fixture) push(t *testing.T, repo, tag, content string) digest.Digest {
	t.Helper()
	return f.put(t, repo, tag, f.image(t, repo, content))
}

// pushUntagged pushes a one-layer image by digest only.
func (f *fixture) pushUntagged(t *testing.T, repo, content string) digest.Digest {
	t.Helper()
	m := f.image(t, repo, content)
	return f.put(t, repo, digest.FromBytes(m).String(), m)
}

// pushIndex pushes an index of two images (pushed by digest) as repo:tag
// and returns the index's digest and its children's.
func (f *fixture) pushIndex(t *testing.T, repo, tag, content string) (digest.Digest, []digest.Digest) {
	t.Helper()
	var kids []digest.Digest
	var descs []v1.Descriptor
	for _, arch := range []string{"amd64", "arm64"} {
		m := f.image(t, repo, content+"/"+arch)
		kids = append(kids, f.put(t, repo, digest.FromBytes(m).String(), m))
		descs = append(descs, v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.FromBytes(m), Size: int64(len(m)),
			Platform: &v1.Platform{OS: "linux", Architecture: arch}})
	}
	idx, err := json.Marshal(v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: descs})
	if err != nil {
		t.Fatal(err)
	}
	return f.put(t, repo, tag, idx), kids
}

// served returns the digest the upstream serves for repo:ref, or "" when
// it has none.
func (f *fixture) served(t *testing.T, repo, ref string) digest.Digest {
	t.Helper()
	rec := request(f.up, http.MethodGet, "/v2/"+repo+"/manifests/"+ref, "", nil)
	switch rec.Code {
	case http.StatusOK:
		return digest.FromBytes(rec.Body.Bytes())
	case http.StatusNotFound:
		return ""
	}
	t.Fatalf("GET %s:%s from the upstream: %d %s", repo, ref, rec.Code, rec.Body)
	return ""
}

// upstreamTags lists repo's tags on the upstream, sorted.
func (f *fixture) upstreamTags(t *testing.T, repo string) []string {
	t.Helper()
	got, err := f.proxy.Drift().UpstreamTags(context.Background(), repo)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	return got
}

// binding returns the ledger's binding of repo:tag.
func (f *fixture) binding(t *testing.T, repo, tag string) storage.Binding {
	t.Helper()
	b, err := f.ledger.Ledger.Binding(context.Background(), repo, tag)
	if err != nil {
		t.Fatalf("binding %s:%s: %v", repo, tag, err)
	}
	return b
}

// mustApply applies r and fails the test on an error.
func mustApply(t *testing.T, r *Runner) Result {
	t.Helper()
	res, err := r.Apply(context.Background(), ApplyOptions{})
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	return res
}

// outcomes maps "tag" or "@digest" to the outcome of its deletion.
func outcomes(res Result) map[string]string {
	out := map[string]string{}
	for _, d := range res.Deletions {
		k := d.Tag
		if k == "" {
			k = "@" + d.Digest.String()
		}
		out[k] = d.Outcome
	}
	return out
}

// errLedgerDown is the failure faultyLedger injects.
var errLedgerDown = errors.New("ledger unavailable (injected)")

// faultyLedger is a bolt ledger whose methods named in fail return
// errLedgerDown instead of reaching it. The runner and the proxy share it.
type faultyLedger struct {
	storage.Ledger
	mu   sync.Mutex
	fail map[string]bool
}

// failing makes the named methods fail from now on.
func (l *faultyLedger) failing(methods ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.fail = map[string]bool{}
	for _, m := range methods {
		l.fail[m] = true
	}
}

func (l *faultyLedger) down(method string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail[method] {
		return errLedgerDown
	}
	return nil
}

func (l *faultyLedger) Repositories(ctx context.Context) ([]string, error) {
	if err := l.down("Repositories"); err != nil {
		return nil, err
	}
	return l.Ledger.Repositories(ctx)
}

func (l *faultyLedger) Bindings(ctx context.Context, repo string) ([]storage.Binding, error) {
	if err := l.down("Bindings"); err != nil {
		return nil, err
	}
	return l.Ledger.Bindings(ctx, repo)
}

func (l *faultyLedger) Binding(ctx context.Context, repo, tag string) (storage.Binding, error) {
	if err := l.down("Binding"); err != nil {
		return storage.Binding{}, err
	}
	return l.Ledger.Binding(ctx, repo, tag)
}

func (l *faultyLedger) Manifests(ctx context.Context, repo string) ([]storage.Manifest, error) {
	if err := l.down("Manifests"); err != nil {
		return nil, err
	}
	return l.Ledger.Manifests(ctx, repo)
}

func (l *faultyLedger) LastPulls(ctx context.Context, repo string) (map[digest.Digest]time.Time, error) {
	if err := l.down("LastPulls"); err != nil {
		return nil, err
	}
	return l.Ledger.LastPulls(ctx, repo)
}

func (l *faultyLedger) JobStates(ctx context.Context, prefix string) (map[string][]byte, error) {
	if err := l.down("JobStates"); err != nil {
		return nil, err
	}
	return l.Ledger.JobStates(ctx, prefix)
}

func (l *faultyLedger) PutJobStates(ctx context.Context, values map[string][]byte) error {
	if err := l.down("PutJobStates"); err != nil {
		return err
	}
	return l.Ledger.PutJobStates(ctx, values)
}

func (l *faultyLedger) Reserve(ctx context.Context, r storage.Reservation) (storage.Reservation, error) {
	if err := l.down("Reserve"); err != nil {
		return storage.Reservation{}, err
	}
	return l.Ledger.Reserve(ctx, r)
}

func (l *faultyLedger) Referencing(ctx context.Context, repo string, d digest.Digest) ([]storage.Binding, error) {
	if err := l.down("Referencing"); err != nil {
		return nil, err
	}
	return l.Ledger.Referencing(ctx, repo, d)
}
