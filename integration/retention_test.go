package integration

import (
	"context"

	"errors"
	"fmt"
	"github.com/rs/zerolog"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/internal/retention"
	"github.com/taglock/taglock/internal/server"
)

// retentionConfig governs ci/** with: release tags, the 3 most recent, and
// anything pulled within the hour kept; untagged manifests deleted; and
// immutable tags released as soon as no rule keeps them.
func retentionConfig(maxDeletions int) func(*config.Config) {
	return func(c *config.Config) {
		c.Immutability.Rules = append([]config.ImmutabilityRule{{Repositories: []string{"ci/**"},
			Tags: []string{"build-*", "alias-*", "multi"}, Mode: "mutable"}}, c.Immutability.Rules...)
		c.Retention.MaxDeletions = maxDeletions
		c.Retention.Policies = []config.RetentionPolicy{{
			Repositories: []string{"ci/**"},
			Keep: []config.KeepRule{{Tags: []string{"v*"}}, {MostRecent: 3},
				{PulledWithin: config.Duration(time.Hour)}},
			Untagged:  "delete",
			Immutable: config.ImmutableRetention{ReleaseAfter: config.Duration(time.Millisecond)},
		}}
	}
}

// seeded is what one repository of the realistic set holds.
type seeded struct {
	repo     string
	digests  map[string]digest.Digest // tag -> digest
	children []digest.Digest          // of the index tagged multi (deleted)
	keptKids []digest.Digest          // of the index tagged v2.0 (kept)
}

// seedRepo pushes through taglock, in this order: an index "multi" with
// two platforms, an immutable "old-1", immutable "v1.0", an index "v2.0",
// build-00 and alias-00 on the same digest, build-01..build-NN, and
// signatures (sha256-<hex>.sig) of the newest and of build-01.
func seedRepo(t *testing.T, addr, repo string, builds int) seeded {
	t.Helper()
	s := seeded{repo: repo, digests: map[string]digest.Digest{}}
	push := func(tag string) digest.Digest {
		img := MustImage(t)
		MustPush(t, addr, repo+":"+tag, img)
		s.digests[tag] = MustDigest(t, img)
		return s.digests[tag]
	}
	index := func(tag string) ([]digest.Digest, digest.Digest) {
		a, b := MustImage(t), MustImage(t)
		idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: a}, mutate.IndexAddendum{Add: b})
		if err := remote.WriteIndex(mustRef(t, addr, repo+":"+tag), idx, ggcrOpts(t)...); err != nil {
			t.Fatalf("push index %s:%s: %v", repo, tag, err)
		}
		s.digests[tag] = MustDigest(t, idx)
		return []digest.Digest{MustDigest(t, a), MustDigest(t, b)}, s.digests[tag]
	}
	s.children, _ = index("multi")
	push("old-1")
	push("v1.0")
	s.keptKids, _ = index("v2.0")
	img := MustImage(t)
	MustPush(t, addr, repo+":build-00", img)
	MustPush(t, addr, repo+":alias-00", img)
	s.digests["build-00"], s.digests["alias-00"] = MustDigest(t, img), MustDigest(t, img)
	for i := 1; i <= builds; i++ {
		push(fmt.Sprintf("build-%02d", i))
	}
	newest := fmt.Sprintf("build-%02d", builds)
	for _, of := range []string{newest, "build-01"} {
		push("sha256-" + s.digests[of].Encoded() + ".sig")
	}
	return s
}

// expectedTags is what the policy must keep in a seeded repository, with
// build-02 pulled.
func (s seeded) expectedKept(builds int) []string {
	kept := []string{"v1.0", "v2.0", "build-02"}
	for i := builds - 2; i <= builds; i++ {
		kept = append(kept, fmt.Sprintf("build-%02d", i))
	}
	kept = append(kept, "sha256-"+s.digests[fmt.Sprintf("build-%02d", builds)].Encoded()+".sig")
	slices.Sort(kept)
	return kept
}

// A realistic set of repositories: the plan keeps and deletes exactly what
// the policy says, apply deletes exactly the plan, every kept tag still
// pulls, released immutable tags refuse other content, and in embedded
// mode garbage collection frees storage while pushes keep landing.
func TestRetentionPlanAndApply(t *testing.T) {
	forEachMode(t, func(t *testing.T, m Mode) {
		const repos, builds = 4, 44 // 4 x (44 builds + 7 others) = 204 tags
		e := MustEnv(t, m, retentionConfig(1000))
		var set []seeded
		for i := range repos {
			set = append(set, seedRepo(t, e.Addr, fmt.Sprintf("ci/app-%d", i), builds))
		}
		for _, s := range set { // a pull through taglock keeps build-02
			if _, err := remote.Get(mustRef(t, e.Addr, s.repo+":build-02"), ggcrOpts(t)...); err != nil {
				t.Fatalf("pull: %v", err)
			}
		}
		waitPulls(t, e, set)
		c := admin.NewClient(e.srv.AdminSocket())
		rep, err := c.RetentionPlan(t.Context())
		if err != nil {
			t.Fatalf("plan: %v", err)
		}
		if len(rep.Plans) != repos {
			t.Fatalf("plans for %d repositories, want %d", len(rep.Plans), repos)
		}
		wantDeletedDigests := map[string][]digest.Digest{}
		for i, p := range rep.Plans {
			s := set[i]
			var kept, deleted []string
			for _, td := range p.Tags {
				if td.Kept {
					kept = append(kept, td.Tag)
				} else {
					deleted = append(deleted, td.Tag)
				}
				if td.Tag == "old-1" && !td.Released {
					t.Errorf("%s: old-1 is not released: %+v", s.repo, td)
				}
			}
			if want := s.expectedKept(builds); !slices.Equal(kept, want) {
				t.Errorf("%s: kept %v, want %v", s.repo, kept, want)
			}
			if len(kept)+len(deleted) != len(s.digests) {
				t.Errorf("%s: %d tags planned, %d pushed", s.repo, len(kept)+len(deleted), len(s.digests))
			}
			want := map[digest.Digest]bool{}
			for _, tag := range deleted {
				want[s.digests[tag]] = true
			}
			for _, d := range s.children {
				want[d] = true
			}
			var got []digest.Digest
			for _, d := range p.DeleteOrder {
				if !want[d] {
					t.Errorf("%s: plan deletes %s, which nothing expects deleted", s.repo, d)
				}
				got = append(got, d)
			}
			if len(got) != len(want) {
				t.Errorf("%s: plan deletes %d digests, want %d", s.repo, len(got), len(want))
			}
			wantDeletedDigests[s.repo] = got
		}

		var pushed []string
		var wg sync.WaitGroup
		stop := make(chan struct{})
		if m == Embedded { // pushes land while garbage collection runs
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					ref := fmt.Sprintf("other/busy:p%d", i)
					img, _ := random.Image(512, 2)
					if err := remote.Write(mustRef(t, e.Addr, ref), img, ggcrOpts(t)...); err != nil {
						t.Errorf("push during retention: %v", err)
						return
					}
					pushed = append(pushed, ref)
				}
			}()
		}
		res, err := c.RetentionApply(t.Context())
		close(stop)
		wg.Wait()
		if err != nil {
			t.Fatalf("apply: %v", err)
		}
		if res.Failed != 0 || res.Skipped != 0 || res.Resumed != 0 {
			t.Errorf("apply: failed %d, skipped %d, resumed %d; want none", res.Failed, res.Skipped, res.Resumed)
		}
		if res.Deleted != rep.Totals.Deletions() {
			t.Errorf("apply deleted %d, the plan had %d", res.Deleted, rep.Totals.Deletions())
		}
		// Apply planned again; the plan must be the one shown.
		if got, want := res.Report.Totals, rep.Totals; got.TagsDeleted != want.TagsDeleted || got.ManifestsDeleted != want.ManifestsDeleted {
			t.Errorf("apply's plan %+v differs from the plan shown %+v", got, want)
		}
		for _, s := range set {
			for _, tag := range s.expectedKept(builds) {
				if _, err := remote.Get(mustRef(t, e.Addr, s.repo+":"+tag), ggcrOpts(t)...); err != nil {
					t.Errorf("kept %s:%s no longer pulls: %v", s.repo, tag, err)
				}
			}
			for _, d := range s.keptKids {
				if _, err := remote.Get(mustRef(t, e.Addr, s.repo+"@"+d.String()), ggcrOpts(t)...); err != nil {
					t.Errorf("child %s of the kept index no longer pulls: %v", d, err)
				}
			}
			for _, d := range wantDeletedDigests[s.repo] {
				resp, _ := do(t, http.MethodHead, e.URL("/v2/"+s.repo+"/manifests/"+d.String()), nil,
					http.Header{"Accept": {"application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json"}})
				if resp.StatusCode != http.StatusNotFound {
					t.Errorf("deleted %s@%s answers %d", s.repo, d, resp.StatusCode)
				}
			}
			// The released immutable tag is a tombstone: other content is refused.
			err := remote.Write(mustRef(t, e.Addr, s.repo+":old-1"), MustImage(t), ggcrOpts(t)...)
			if e := ggcrError(t, err); e.Code != "DENIED" {
				t.Errorf("re-push of other content to released %s:old-1: %v, want DENIED", s.repo, err)
			}
		}
		if m == Embedded {
			if res.GC == nil || res.GC.BytesFreed <= 0 || res.GC.BytesAfter >= res.GC.BytesBefore {
				t.Errorf("garbage collection did not shrink storage: %+v", res.GC)
			}
			for _, ref := range pushed {
				if _, err := remote.Image(mustRef(t, e.Addr, ref), ggcrOpts(t)...); err != nil {
					t.Errorf("image pushed during collection %s does not pull: %v", ref, err)
				}
			}
			if len(pushed) == 0 {
				t.Error("no push landed during the run")
			}
		} else if res.GC != nil {
			t.Errorf("garbage collection ran against a remote upstream: %+v", res.GC)
		}
	})
}

// waitPulls waits for pull tracking to record build-02's pull everywhere.
func waitPulls(t *testing.T, e *Env, set []seeded) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, s := range set {
		for {
			pulls, err := e.Ledger().LastPulls(t.Context(), s.repo)
			if err != nil {
				t.Fatal(err)
			}
			if !pulls[s.digests["build-02"]].IsZero() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the pull of build-02 was never recorded", s.repo)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// A plan over max_deletions is refused before anything is deleted, and an
// interrupted run resumes where it stopped.
func TestRetentionLimitAndResume(t *testing.T) {
	e := NewEnv(t, Separate, retentionConfig(5))
	e.Start(t)
	s := seedRepo(t, e.Addr, "ci/small", 6)
	c := admin.NewClient(e.srv.AdminSocket())
	_, err := c.RetentionApply(t.Context())
	if !errors.Is(err, retention.ErrTooManyDeletions) {
		t.Fatalf("apply over max_deletions: %v, want ErrTooManyDeletions", err)
	}
	if _, err := remote.Head(mustRef(t, e.Addr, "ci/small:build-00"), ggcrOpts(t)...); err != nil {
		t.Fatalf("a refused plan deleted build-00: %v", err)
	}

	// Interrupt a run after three deletions, offline, then resume it.
	e.Stop(t)
	ledger := e.MustOpenLedger(t)
	cfg := e.cfg
	retentionConfig(0)(&cfg)
	off, err := server.NewOffline(t.Context(), cfg, ledger, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	defer off.Close()
	pol, _ := cfg.RetentionSettings()
	im, _ := cfg.ImmutabilityPolicy()
	runner := retention.New(retention.Options{Policy: pol, Immutability: im, Ledger: ledger, Upstream: off.Drift(),
		Dir: server.RetentionDir(e.Data)})
	want, err := runner.Plan(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := contextWithCancel(t)
	first, err := runner.Apply(ctx, retention.ApplyOptions{Progress: func(p retention.Progress) {
		if p.Done == 3 {
			cancel()
		}
	}})
	if err == nil || len(first.Deletions) != 3 {
		t.Fatalf("interrupted apply: %d deletions, err %v; want 3 and an error", len(first.Deletions), err)
	}
	pending, err := runner.Pending(context.Background())
	if err != nil || len(pending) != want.Totals.Deletions()-3 {
		t.Fatalf("pending after interruption: %d (%v), want %d\nplanned: %+v\napplied plan: %+v\npending: %+v",
			len(pending), err, want.Totals.Deletions()-3, want.Plans, first.Report.Plans, pending)
	}
	second, err := runner.Apply(t.Context(), retention.ApplyOptions{})
	if err != nil {
		t.Fatalf("resumed apply: %v", err)
	}
	if second.Resumed != len(pending) || second.Failed != 0 {
		t.Errorf("resumed %d (failed %d), want %d", second.Resumed, second.Failed, len(pending))
	}
	if n := second.Report.Totals.Deletions(); n != 0 {
		t.Errorf("after resuming, a fresh plan still deletes %d", n)
	}
	if p, _ := runner.Pending(context.Background()); len(p) != 0 {
		t.Errorf("state left after a finished run: %v", p)
	}
	for _, tag := range s.expectedKept(6) {
		if tag == "build-02" {
			continue // not pulled in this test
		}
		if b, err := ledger.Binding(t.Context(), "ci/small", tag); err != nil || b.Deleted {
			t.Errorf("kept tag %s: %+v %v", tag, b, err)
		}
	}
	if b, err := ledger.Binding(t.Context(), "ci/small", "build-00"); err != nil || !b.Deleted {
		t.Errorf("build-00 is not a tombstone: %+v %v", b, err)
	}

}

// With retention.schedule set, serve applies the policy on its own, again
// on every tick: the old builds of a seeded repository go, and so do those
// that newer pushes make old, while what the policy keeps stays. Shutdown
// ends the loop.
func TestRetentionSchedule(t *testing.T) {
	e := NewEnv(t, Separate, retentionConfig(0))
	e.Start(t)
	seedRepo(t, e.Addr, "ci/sched", 6)
	e.Stop(t)
	e.cfg.Retention.Schedule = config.Duration(100 * time.Millisecond)
	e.Start(t)
	defer e.Stop(t)

	tombstone := func(tag string) bool {
		b, err := e.Ledger().Binding(t.Context(), "ci/sched", tag)
		return err == nil && b.Deleted
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("no scheduled run %s within 20s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("deleted build-00", func() bool { return tombstone("build-00") && tombstone("build-03") })
	for _, tag := range []string{"v1.0", "v2.0", "build-04", "build-05", "build-06"} {
		if tombstone(tag) {
			t.Errorf("the policy keeps %s, but a scheduled run deleted it", tag)
		}
	}
	if _, err := remote.Head(mustRef(t, e.Addr, "ci/sched:build-06"), ggcrOpts(t)...); err != nil {
		t.Errorf("kept build-06 no longer pulls: %v", err)
	}

	// Two newer builds make build-04 and build-05 old: a later tick
	// deletes them without being asked.
	for _, tag := range []string{"build-07", "build-08"} {
		MustPush(t, e.Addr, "ci/sched:"+tag, MustImage(t))
	}
	waitFor("deleted build-05 after newer pushes", func() bool { return tombstone("build-04") && tombstone("build-05") })
	if tombstone("build-06") || tombstone("build-08") || tombstone("v1.0") {
		t.Error("a scheduled run deleted a tag the policy keeps")
	}
}

func nopLog() zerolog.Logger { return zerolog.Nop() }

func contextWithCancel(t *testing.T) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	return ctx, cancel
}

// TestRetentionResumeFollowsTheCurrentPolicy ensures an interrupted run is
// not finished under a configuration that no longer asks for it: an
// operator who stops a mistaken run (release_after far too short) and
// reverts the configuration loses no more tags, and a lowered
// max_deletions refuses what is left.
func TestRetentionResumeFollowsTheCurrentPolicy(t *testing.T) {
	t.Parallel()
	e := MustEnv(t, Embedded)
	for i := range 12 {
		MustPush(t, e.Addr, fmt.Sprintf("team/mass:r%02d", i), MustImage(t))
	}
	e.Stop(t)
	ledger := e.MustOpenLedger(t)
	runner := func(release time.Duration, maxDeletions int) *retention.Runner {
		cfg := e.cfg
		cfg.Retention.MaxDeletions = maxDeletions
		cfg.Retention.Policies = []config.RetentionPolicy{{Repositories: []string{"team/**"},
			Keep: []config.KeepRule{{MostRecent: 1}}, Immutable: config.ImmutableRetention{ReleaseAfter: config.Duration(release)}}}
		off, err := server.NewOffline(t.Context(), cfg, ledger, nopLog())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = off.Close() })
		pol, _ := cfg.RetentionSettings()
		im, _ := cfg.ImmutabilityPolicy()
		return retention.New(retention.Options{Policy: pol, Immutability: im, Ledger: ledger, Upstream: off.Drift(),
			Dir: server.RetentionDir(e.Data)})
	}
	live := func() int {
		bs, err := ledger.Bindings(t.Context(), "team/mass")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, b := range bs {
			if !b.Deleted {
				n++
			}
		}
		return n
	}

	// The mistaken run, interrupted after three deletions.
	ctx, cancel := contextWithCancel(t)
	mistaken := runner(time.Nanosecond, 0)
	if _, err := mistaken.Apply(ctx, retention.ApplyOptions{Progress: func(p retention.Progress) {
		if p.Done == 3 {
			cancel()
		}
	}}); err == nil {
		t.Fatal("interrupted apply: no error")
	}
	if n := live(); n != 9 {
		t.Fatalf("%d tags live after three deletions, want 9", n)
	}
	// Lowered max_deletions: what is left is refused.
	if _, err := runner(time.Nanosecond, 2).Apply(t.Context(), retention.ApplyOptions{}); !errors.Is(err, retention.ErrTooManyDeletions) {
		t.Errorf("resume over a lowered max_deletions: %v, want ErrTooManyDeletions", err)
	}
	// Reverted: immutable tags are kept again, and nothing more goes.
	res, err := runner(0, 0).Apply(t.Context(), retention.ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Resumed != 0 {
		t.Errorf("apply after reverting resumed %d deletions, want none", res.Resumed)
	}
	for _, d := range res.Deletions {
		if d.Tag != "" {
			t.Errorf("apply after reverting deleted tag %s (%s)", d.Tag, d.Outcome)
		}
	}
	if n := live(); n != 9 {
		t.Errorf("%d tags live after the reverted apply, want 9", n)
	}
}
