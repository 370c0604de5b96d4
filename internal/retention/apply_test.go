package retention

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/storage"
)

// pushBuilds pushes v1 and build-1..build-4 to team/app: with keep v*, a
// run deletes the four builds, then their four manifests.
func pushBuilds(t *testing.T, f *fixture) {
	t.Helper()
	for _, tag := range []string{"v1", "build-1", "build-2", "build-3", "build-4"} {
		f.push(t, "team/app", tag, tag)
	}
}

// TestAnInterruptedRunResumes ensures that a run stopped after its first
// deletion leaves the rest in its journal in the ledger, and that the next
// run, by another Runner, finishes them first (Resumed) under the same
// configuration, or drops them and plans afresh when the configuration
// changed meanwhile.
func TestAnInterruptedRunResumes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		next        []string // tags the next run's configuration keeps
		wantResumed int
		wantTags    []string // upstream tags after the next run
	}{
		{"same configuration: the journal is finished", []string{"v*"}, 7, []string{"v1"}},
		{"changed configuration: the journal is dropped", []string{"v*", "build-*"}, 0, []string{"build-2", "build-3", "build-4", "v1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			pushBuilds(t, f)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, err := f.runner(retain(0, tags("v*"))).Apply(ctx, ApplyOptions{Progress: func(Progress) { cancel() }})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("interrupted apply = %v, want context.Canceled", err)
			}
			next := f.runner(retain(0, tags(tc.next...)))
			pending, err := next.Pending(context.Background())
			if err != nil || len(pending) != 7 || pending[0].Tag != "build-2" {
				t.Fatalf("pending after the interruption = %+v, %v; want build-2..4 then 4 manifests", pending, err)
			}
			res := mustApply(t, next)
			if res.Resumed != tc.wantResumed {
				t.Errorf("resumed %d deletions, want %d", res.Resumed, tc.wantResumed)
			}
			if got := f.upstreamTags(t, "team/app"); !slices.Equal(got, tc.wantTags) {
				t.Errorf("upstream tags = %v, want %v", got, tc.wantTags)
			}
			if pending, err := next.Pending(context.Background()); err != nil || pending != nil {
				t.Errorf("pending after the run = %+v, %v; want none", pending, err)
			}
		})
	}
}

// TestApplyNeverUndoesAPushThatLandedAfterThePlan ensures that each
// deletion is checked again just before it runs: a tag pushed again with
// other content since the plan, and a manifest a tag was pushed onto since
// the plan, are skipped, not deleted.
func TestApplyNeverUndoesAPushThatLandedAfterThePlan(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	const repo = "team/app"
	old := f.push(t, repo, "build-1", "old")
	orphan := f.pushUntagged(t, repo, "orphan")
	r := f.runner(retain(0, tags("*")))
	// The plan, as an interrupted run left it.
	j := &journal{Started: f.clock(), Policy: r.fingerprint(), Pending: []Deletion{
		{Repo: repo, Tag: "build-1", Digest: old},
		{Repo: repo, Digest: orphan},
	}}
	if err := r.saveJournal(ctx, j); err != nil {
		t.Fatal(err)
	}
	// Pushes after the plan.
	moved := f.push(t, repo, "build-1", "new")
	f.put(t, repo, "pr-7", manifestBytes(t, f, repo, orphan))

	res := mustApply(t, r)
	if got := outcomes(res); got["build-1"] != OutcomeSkipped || got["@"+orphan.String()] != OutcomeSkipped {
		t.Errorf("outcomes = %v; want both skipped", got)
	}
	if res.Resumed != 2 || res.Skipped != 2 || res.Deleted != 0 {
		t.Errorf("result: resumed %d, skipped %d, deleted %d; want 2, 2, 0", res.Resumed, res.Skipped, res.Deleted)
	}
	if f.served(t, repo, "build-1") != moved || f.served(t, repo, "pr-7") != orphan {
		t.Errorf("the pushes after the plan were undone: build-1 %s, pr-7 %s", f.served(t, repo, "build-1"), f.served(t, repo, "pr-7"))
	}
}

// manifestBytes returns the bytes the upstream serves for repo@d.
func manifestBytes(t *testing.T, f *fixture, repo string, d digest.Digest) []byte {
	t.Helper()
	rec := request(f.up, http.MethodGet, "/v2/"+repo+"/manifests/"+d.String(), "", nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("GET %s@%s: %d", repo, d, rec.Code)
	}
	return rec.Body.Bytes()
}

// TestApplyLeavesWhatAPushHoldsAlone ensures that a tag a push has
// reserved (its outcome not settled yet) is skipped, not deleted, and is
// deleted by the first run after the reservation ends.
func TestApplyLeavesWhatAPushHoldsAlone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	const repo = "team/app"
	f.push(t, repo, "v1", "v1")
	d := f.push(t, repo, "build-1", "build-1")
	b := f.binding(t, repo, "build-1")
	held, err := f.ledger.Reserve(ctx, storage.Reservation{Repo: repo, Tags: []string{"build-1"}, Digest: d,
		Expect: map[string]storage.Seen{"build-1": b.Seen()}})
	if err != nil {
		t.Fatal(err)
	}
	r := f.runner(retain(0, tags("v*")))
	res := mustApply(t, r)
	if got := outcomes(res); got["build-1"] != OutcomeSkipped || res.Deleted != 0 {
		t.Errorf("outcomes while a push holds build-1 = %v, deleted %d; want build-1 skipped and nothing deleted", got, res.Deleted)
	}
	if f.served(t, repo, "build-1") != d || f.binding(t, repo, "build-1").Deleted {
		t.Errorf("build-1 was deleted while a push held it")
	}
	if err := f.ledger.Release(ctx, held.ID); err != nil {
		t.Fatal(err)
	}
	if got := outcomes(mustApply(t, r)); got["build-1"] != OutcomeDeleted {
		t.Errorf("outcomes once the push let go = %v; want build-1 deleted", got)
	}
}

// TestALedgerErrorStopsTheRun ensures that retention never fails open:
// when any ledger read or write it depends on fails, before or during the
// run, Apply returns the error and deletes nothing more (nothing at all
// when the failure comes first).
func TestALedgerErrorStopsTheRun(t *testing.T) {
	t.Parallel()
	for _, method := range []string{
		"Repositories", // listing what is governed
		"Bindings",     // reading the tags to plan
		"Manifests",    // reading the manifest graph
		"LastPulls",    // reading pull times
		"JobStates",    // reading the journal and first-seen times
		"PutJobStates", // recording the journal
		"Binding",      // re-checking a tag just before deleting it
		"Reserve",      // reserving the delete through the proxy
		"Referencing",  // re-checking a manifest just before deleting it
	} {
		t.Run(method, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			pushBuilds(t, f)
			before := f.upstreamTags(t, "team/app")
			f.ledger.failing(method)
			if method == "Referencing" {
				// Only the manifests' deletions read it: the tags go first.
				before = []string{"v1"}
			}
			res, err := f.runner(retain(0, tags("v*"))).Apply(context.Background(), ApplyOptions{})
			f.ledger.failing()
			if !errors.Is(err, errLedgerDown) && !errors.Is(err, proxy.ErrLedger) {
				t.Fatalf("apply with %s failing = %v; want the ledger's error", method, err)
			}
			if got := f.upstreamTags(t, "team/app"); !slices.Equal(got, before) {
				t.Errorf("upstream tags = %v, want %v", got, before)
			}
			for _, d := range res.Deletions {
				if d.Digest != "" && d.Tag == "" && d.Outcome == OutcomeDeleted {
					t.Errorf("manifest %s deleted despite the failure", d.Digest)
				}
			}
		})
	}
	t.Run("midway", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		pushBuilds(t, f)
		_, err := f.runner(retain(0, tags("v*"))).Apply(context.Background(), ApplyOptions{
			Progress: func(Progress) { f.ledger.failing("Binding") }})
		f.ledger.failing()
		if !errors.Is(err, errLedgerDown) {
			t.Fatalf("apply with the ledger failing after the first deletion = %v; want its error", err)
		}
		if got := f.upstreamTags(t, "team/app"); !slices.Equal(got, []string{"build-2", "build-3", "build-4", "v1"}) {
			t.Errorf("upstream tags = %v; want only build-1 deleted", got)
		}
		pending, err := f.runner(retain(0, tags("v*"))).Pending(context.Background())
		if err != nil || len(pending) != 7 {
			t.Errorf("pending = %d deletions, %v; want the 7 the run did not do", len(pending), err)
		}
	})
}

// TestGarbageCollectionIsOwedUntilItRuns ensures that a run that deleted
// something collects garbage, that a collection deferred (or failed) is
// owed and run by the next run even if it deletes nothing, and that no
// collection runs when none is owed and nothing was deleted.
func TestGarbageCollectionIsOwedUntilItRuns(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	pushBuilds(t, f)
	var calls int
	next := []GCResult{{Deferred: true, Reason: "writes in flight"}, {BlobsDeleted: 3}}
	r := f.runner(retain(0, tags("v*")), func(o *Options) {
		o.GC = func(context.Context, BoundFunc) (GCResult, error) {
			calls++
			gc := next[0]
			next = next[1:]
			return gc, nil
		}
	})
	for i, want := range []struct {
		calls    int
		deferred bool
		ran      bool
	}{
		{1, true, true},   // deletions: collect; deferred, so owed
		{2, false, true},  // nothing deleted, but owed: collect
		{2, false, false}, // nothing deleted, nothing owed
	} {
		res := mustApply(t, r)
		if calls != want.calls || (res.GC != nil) != want.ran || (res.GC != nil && res.GC.Deferred != want.deferred) {
			t.Errorf("run %d: %d collections so far, result %+v; want %d, ran %v, deferred %v", i+1, calls, res.GC, want.calls, want.ran, want.deferred)
		}
	}
}

// TestCollectGarbage ensures that after retention deleted an image, a mark
// and sweep of the embedded registry's storage removes its blobs, keeps
// every blob a remaining manifest references, and keeps unreferenced blobs
// it is told a push in flight uses.
func TestCollectGarbage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	const repo = "team/app"
	f.push(t, repo, "v1", "kept layer")
	f.push(t, repo, "build-1", "deleted layer")
	mustApply(t, f.runner(retain(0, tags("v*"))))
	inFlight := f.blob(t, repo, []byte("uploaded, manifest not pushed yet"), "")

	res, err := CollectGarbage(ctx, f.root, map[digest.Digest]bool{inFlight.Digest: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.BlobsDeleted != 2 || res.Protected != 1 || res.BytesFreed <= 0 {
		t.Errorf("collection = %+v; want build-1's manifest and layer deleted, the upload protected, bytes freed", res)
	}
	for _, tc := range []struct {
		what  string
		path  string
		found bool
	}{
		{"v1's layer", "/v2/" + repo + "/blobs/" + digest.FromString("kept layer").String(), true},
		{"the upload in flight", "/v2/" + repo + "/blobs/" + inFlight.Digest.String(), true},
		{"build-1's layer", "/v2/" + repo + "/blobs/" + digest.FromString("deleted layer").String(), false},
	} {
		if rec := request(f.up, http.MethodGet, tc.path, "", nil); (rec.Code == http.StatusOK) != tc.found {
			t.Errorf("%s: GET %d, want found %v", tc.what, rec.Code, tc.found)
		}
	}
}

// TestAResumedRunNeverDeletesATagThatBecameImmutable ensures that a
// deletion an interrupted run planned for a mutable tag is skipped when the
// tag has since been recorded immutable (an identical re-push while the
// configuration made it immutable, then reverted): such a tag is immutable
// for good (policy.Effective), a fresh plan keeps it and a client's DELETE
// is refused, so the resumed journal must not delete it either.
func TestAResumedRunNeverDeletesATagThatBecameImmutable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	const repo = "team/app"
	d := f.push(t, repo, "build-1", "one")
	r := f.runner(retain(0, tags("v*")))
	// The plan, as an interrupted run left it: build-1 was mutable then.
	j := &journal{Started: f.clock(), Policy: r.fingerprint(), Pending: []Deletion{{Repo: repo, Tag: "build-1", Digest: d}}}
	if err := r.saveJournal(ctx, j); err != nil {
		t.Fatal(err)
	}
	// Meanwhile a taglock whose configuration makes every build immutable
	// takes an identical re-push: the tag is recorded immutable.
	strict := proxy.New(proxy.Options{Upstream: proxy.NewInProcess(f.up), Ledger: f.ledger,
		Immutability: policy.DefaultImmutability(), Now: f.clock, ReserveWait: 50 * time.Millisecond})
	m := manifestBytes(t, f, repo, d)
	if rec := request(strict, http.MethodPut, "/v2/"+repo+"/manifests/build-1", v1.MediaTypeImageManifest, m); rec.Code != http.StatusCreated {
		t.Fatalf("identical re-push under the strict configuration: %d %s", rec.Code, rec.Body)
	}
	if b := f.binding(t, repo, "build-1"); b.Mode != policy.Immutable {
		t.Fatalf("build-1 recorded %v after the strict re-push, want immutable", b.Mode)
	}
	// A client's DELETE is refused now, under the original configuration.
	if rec := request(f.proxy, http.MethodDelete, "/v2/"+repo+"/manifests/build-1", "", nil); rec.Code != http.StatusForbidden {
		t.Fatalf("client DELETE of build-1: %d %s, want 403", rec.Code, rec.Body)
	}
	res := mustApply(t, r)
	if got := outcomes(res); got["build-1"] != OutcomeSkipped {
		t.Errorf("outcomes = %v; want build-1 skipped", got)
	}
	if got := f.served(t, repo, "build-1"); got != d {
		t.Errorf("the upstream serves build-1 as %q, want %s: the resumed run deleted a tag recorded immutable", got, d)
	}
	if b := f.binding(t, repo, "build-1"); b.Deleted {
		t.Errorf("build-1 is a tombstone: %+v", b)
	}
}

// TestCollectGarbageFollowsEveryRepositorysManifests ensures that a
// manifest's blobs are marked in its own repository even when another
// repository, enumerated first, references the manifest's digest as a
// plain blob (anyone may upload a manifest's bytes as a layer): that walk
// cannot follow the digest as a manifest there, and must not stop this
// repository's walk from following it, or the sweep deletes an immutable
// tag's layers while the tag stays bound.
func TestCollectGarbageFollowsEveryRepositorysManifests(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	const victim, evil = "team/app", "a/evil"
	d := f.push(t, victim, "v1", "the victim's layer")
	m := manifestBytes(t, f, victim, d)
	// An image in a repository enumerated before team/app whose layer is
	// team/app:v1's manifest, uploaded as a blob.
	cfg := f.blob(t, evil, []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`), v1.MediaTypeImageConfig)
	layer := f.blob(t, evil, m, v1.MediaTypeImageLayer)
	em, err := json.Marshal(v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: []v1.Descriptor{layer}})
	if err != nil {
		t.Fatal(err)
	}
	f.put(t, evil, "1.0", em)

	if _, err := CollectGarbage(ctx, f.root, nil); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{
		"/v2/" + victim + "/blobs/" + digest.FromString("the victim's layer").String(),
		"/v2/" + victim + "/manifests/v1",
	} {
		if rec := request(f.up, http.MethodGet, p, "", nil); rec.Code != http.StatusOK {
			t.Errorf("GET %s after the collection: %d, want 200: team/app:v1 is immutable and still bound", p, rec.Code)
		}
	}
}

// TestCollectGarbageKeepsWhatTheLedgerBinds ensures that the content of a
// live binding survives a collection even when the registry's own links no
// longer reach it: Distribution's walk silently skips a manifest whose
// content is gone, and would leave its layers unmarked, so an immutable
// tag that verify --repair could still put back (the ledger keeps its
// manifest) would lose its layers for good.
func TestCollectGarbageKeepsWhatTheLedgerBinds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	const repo = "team/app"
	d := f.push(t, repo, "v1", "the layer")
	f.push(t, repo, "build-1", "garbage once untagged")
	data := filepath.Join(f.root, "docker", "registry", "v2", "blobs", "sha256", d.Encoded()[:2], d.Encoded(), "data")
	if err := os.Remove(data); err != nil {
		t.Fatal(err)
	}
	r := f.runner(retain(0, tags("v*")))
	bound, err := r.boundContent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !bound[d] || !bound[digest.FromString("the layer")] {
		t.Fatalf("bound content %v lacks v1's manifest or layer", bound)
	}
	res, err := CollectGarbage(ctx, f.root, bound)
	if err != nil {
		t.Fatal(err)
	}
	if res.Protected == 0 {
		t.Errorf("collection = %+v; want v1's layer kept as bound", res)
	}
	p := "/v2/" + repo + "/blobs/" + digest.FromString("the layer").String()
	if rec := request(f.up, http.MethodGet, p, "", nil); rec.Code != http.StatusOK {
		t.Errorf("GET %s after the collection: %d, want 200: team/app:v1 is bound", p, rec.Code)
	}
}
