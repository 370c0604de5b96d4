package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy/embedded"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

// toolsFixture is a proxy over an embedded registry that the test can also
// write to directly, around the proxy.
type toolsFixture struct {
	srv    *Server
	up     http.Handler
	ledger storage.Ledger
}

func newToolsFixture(t *testing.T) *toolsFixture {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	reg, err := embedded.New(ctx, embedded.Options{Root: filepath.Join(dir, "registry")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Shutdown() })
	l, err := bolt.Open(filepath.Join(dir, "ledger.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	srv := New(Options{Upstream: NewInProcess(reg.Handler()), Ledger: l, Immutability: policy.DefaultImmutability()})
	return &toolsFixture{srv: srv, up: reg.Handler(), ledger: l}
}

// do sends one request straight to the upstream.
func (f *toolsFixture) do(t *testing.T, method, path, contentType string, body []byte) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	f.up.ServeHTTP(rec, req)
	return rec
}

// pushDirect writes a one-layer image whose layer is content to repo:tag on
// the upstream, bypassing taglock, and returns the manifest digest.
func (f *toolsFixture) pushDirect(t *testing.T, repo, tag, content string) digest.Digest {
	t.Helper()
	blob := func(b []byte) v1.Descriptor {
		d := digest.FromBytes(b)
		rec := f.do(t, http.MethodPost, "/v2/"+repo+"/blobs/uploads/", "", nil)
		if rec.Code != http.StatusAccepted {
			t.Fatalf("start upload to %s: %d %s", repo, rec.Code, rec.Body)
		}
		loc, err := url.Parse(rec.Header().Get("Location"))
		if err != nil {
			t.Fatal(err)
		}
		q := loc.Query()
		q.Set("digest", d.String())
		rec = f.do(t, http.MethodPut, loc.Path+"?"+q.Encode(), "application/octet-stream", b)
		if rec.Code != http.StatusCreated {
			t.Fatalf("upload blob to %s: %d %s", repo, rec.Code, rec.Body)
		}
		return v1.Descriptor{Digest: d, Size: int64(len(b))}
	}
	cfg := blob([]byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`))
	cfg.MediaType = v1.MediaTypeImageConfig
	layer := blob([]byte(content))
	layer.MediaType = v1.MediaTypeImageLayer
	m, err := json.Marshal(v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: []v1.Descriptor{layer}})
	if err != nil {
		t.Fatal(err)
	}
	rec := f.do(t, http.MethodPut, "/v2/"+repo+"/manifests/"+tag, v1.MediaTypeImageManifest, m)
	if rec.Code != http.StatusCreated {
		t.Fatalf("put manifest %s:%s: %d %s", repo, tag, rec.Code, rec.Body)
	}
	return digest.FromBytes(m)
}

// upstreamDigest GETs repo:tag from the upstream and returns the digest of
// the bytes, or "" when the tag is absent.
func (f *toolsFixture) upstreamDigest(t *testing.T, repo, tag string) digest.Digest {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("Accept", v1.MediaTypeImageManifest)
	rec := httptest.NewRecorder()
	f.up.ServeHTTP(rec, req)
	if rec.Code == http.StatusNotFound {
		return ""
	}
	if rec.Code != http.StatusOK {
		t.Fatalf("get %s:%s: %d", repo, tag, rec.Code)
	}
	return digest.FromBytes(rec.Body.Bytes())
}

// TestImportTags ensures that import records every upstream tag the ledger
// lacks with its configured mode and the digest of its bytes, keeps the
// manifest of immutable tags, honours repository globs, and is idempotent.
func TestImportTags(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newToolsFixture(t)
	v1d := f.pushDirect(t, "team/app", "1.0.0", "one")
	f.pushDirect(t, "team/app", "latest", "latest")
	f.pushDirect(t, "other/lib", "2.0", "lib")

	only, _ := policy.CompileGlobs([]string{"team/**"})
	var progress int
	rep, err := f.srv.Drift().ImportTags(ctx, ImportOptions{Repositories: only, Rate: 1000, Progress: func(ImportProgress) { progress++ }})
	if err != nil {
		t.Fatal(err)
	}
	if want := (ImportReport{Repositories: 1, Tags: 2, Adopted: 2}); rep != want {
		t.Fatalf("first import = %+v, want %+v", rep, want)
	}
	if progress != 2 {
		t.Errorf("progress called %d times, want 2", progress)
	}
	b, err := f.ledger.Binding(ctx, "team/app", "1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	if b.Digest != v1d || b.Mode != policy.Immutable || digest.FromBytes(b.Manifest) != v1d {
		t.Errorf("binding of 1.0.0 = digest %s mode %s manifest %d bytes; want %s immutable with its manifest", b.Digest, b.Mode, len(b.Manifest), v1d)
	}
	if b, err := f.ledger.Binding(ctx, "team/app", "latest"); err != nil || b.Mode != policy.Mutable || b.Manifest != nil {
		t.Errorf("binding of latest = %+v, %v; want mutable without manifest", b, err)
	}
	if _, err := f.ledger.Binding(ctx, "other/lib", "2.0"); err == nil {
		t.Error("import recorded other/lib:2.0, which the glob excludes")
	}

	rep, err = f.srv.Drift().ImportTags(ctx, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := (ImportReport{Repositories: 2, Tags: 3, Adopted: 1, Skipped: 2}); rep != want {
		t.Fatalf("second import = %+v, want %+v", rep, want)
	}
	h, err := f.ledger.History(ctx, "team/app", "1.0.0", 0)
	if err != nil || len(h) != 1 || h[0].Kind != storage.EventAdopted || h[0].User != "taglock import" {
		t.Errorf("history of 1.0.0 = %+v, %v; want one adopted event by taglock import", h, err)
	}
}

// TestVerifyRepair ensures that verify reports exactly the tags that were
// added, moved and deleted on the upstream around taglock, with both
// digests, and that repair restores the immutable ones.
func TestVerifyRepair(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newToolsFixture(t)
	moved := f.pushDirect(t, "app", "1.0", "one")
	deleted := f.pushDirect(t, "app", "1.1", "one-one")
	f.pushDirect(t, "app", "2.0", "two")
	latest := f.pushDirect(t, "app", "latest", "l1")
	if _, err := f.srv.Drift().ImportTags(ctx, ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	clean, err := f.srv.Drift().Verify(ctx, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(clean.Findings) != 0 || clean.ImmutableDrift() || clean.Tags != 4 {
		t.Fatalf("verify after import = %+v, want 4 tags and no findings", clean)
	}

	movedTo := f.pushDirect(t, "app", "1.0", "tampered")
	if rec := f.do(t, http.MethodDelete, "/v2/app/manifests/1.1", "", nil); rec.Code != http.StatusAccepted {
		t.Fatalf("delete app:1.1 upstream: %d %s", rec.Code, rec.Body)
	}
	added := f.pushDirect(t, "app", "3.0", "three")
	latestTo := f.pushDirect(t, "app", "latest", "l2")

	rep, err := f.srv.Drift().Verify(ctx, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []Finding{
		{Repo: "app", Tag: "1.0", Kind: DriftMoved, Mode: policy.Immutable, Recorded: moved, Actual: movedTo, Immutable: true, Repairable: true},
		{Repo: "app", Tag: "1.1", Kind: DriftDeleted, Mode: policy.Immutable, Recorded: deleted, Immutable: true, Repairable: true},
		{Repo: "app", Tag: "3.0", Kind: DriftNew, Mode: policy.Immutable, Actual: added},
		{Repo: "app", Tag: "latest", Kind: DriftMoved, Mode: policy.Mutable, Recorded: latest, Actual: latestTo},
	}
	if fmt.Sprint(rep.Findings) != fmt.Sprint(want) {
		t.Fatalf("findings:\n got %+v\nwant %+v", rep.Findings, want)
	}
	if !rep.ImmutableDrift() {
		t.Error("ImmutableDrift = false with an immutable tag moved")
	}

	results, err := f.srv.Drift().Repair(ctx, rep.Findings)
	if err != nil {
		t.Fatal(err)
	}
	outcomes := map[string]string{}
	for _, r := range results {
		outcomes[r.Finding.Tag] = r.Outcome + r.Error
	}
	wantOutcomes := map[string]string{"1.0": RepairRestored, "1.1": RepairRestored, "3.0": RepairSkipped, "latest": RepairSkipped}
	if fmt.Sprint(outcomes) != fmt.Sprint(wantOutcomes) {
		t.Fatalf("repair outcomes = %v, want %v", outcomes, wantOutcomes)
	}
	for tag, d := range map[string]digest.Digest{"1.0": moved, "1.1": deleted} {
		if got := f.upstreamDigest(t, "app", tag); got != d {
			t.Errorf("after repair app:%s is %s upstream, want %s", tag, got, d)
		}
	}
	after, err := f.srv.Drift().Verify(ctx, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if after.ImmutableDrift() || len(after.Findings) != 2 {
		t.Errorf("verify after repair = %+v, want only the new and the mutable findings", after.Findings)
	}
	h, err := f.ledger.History(ctx, "app", "1.0", 1)
	if err != nil || len(h) != 1 || h[0].Kind != storage.EventRestored || h[0].Previous != movedTo {
		t.Errorf("newest history of app:1.0 = %+v, %v; want a restored event from %s", h, err, movedTo)
	}
}

// TestRepairWithoutManifest ensures that repair reports a failure, rather
// than guessing, when the ledger kept no manifest bytes for a tag.
func TestRepairWithoutManifest(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newToolsFixture(t)
	d := digest.FromString("gone")
	if err := f.ledger.Put(ctx, []storage.Binding{{Repo: "app", Tag: "1.0", Digest: d, Mode: policy.Immutable, PushedBy: "x"}}, nil); err != nil {
		t.Fatal(err)
	}
	rep, err := f.srv.Drift().Verify(ctx, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Findings) != 1 || rep.Findings[0].Kind != DriftDeleted || rep.Findings[0].Repairable {
		t.Fatalf("findings = %+v, want one unrepairable deleted tag", rep.Findings)
	}
	res, err := f.srv.Drift().Repair(ctx, rep.Findings)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Outcome != RepairFailed || res[0].Error == "" {
		t.Errorf("repair = %+v, want one failure with a reason", res)
	}
}
