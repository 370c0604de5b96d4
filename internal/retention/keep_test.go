package retention

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// TestApplyDeletesTheTagsNoRuleKeeps ensures that a run deletes, upstream,
// exactly the tags no keep rule retains and leaves a tombstone for each in
// the ledger, while it keeps: tags a tags glob matches, the most_recent N
// by push time, tags whose digest was pulled within pulled_within, and
// immutable tags whatever the rules say (no release_after).
func TestApplyDeletesTheTagsNoRuleKeeps(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	const repo = "team/app"
	for _, tag := range []string{"v1.0", "stable", "build-1", "build-2", "build-3", "build-4", "build-5"} {
		f.push(t, repo, tag, tag) // a minute apart, in this order
	}
	f.advance(48 * time.Hour)
	pulled := f.binding(t, repo, "build-1").Digest
	if err := f.ledger.RecordPulls(ctx, []storage.Pull{{Repo: repo, Digest: pulled, At: f.clock().Add(-30 * time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	r := f.runner(retain(0, tags("v*"), policy.KeepRule{MostRecent: 2}, policy.KeepRule{PulledWithin: time.Hour}))
	res := mustApply(t, r)

	tests := []struct {
		tag  string
		kept bool
		why  string
	}{
		{"v1.0", true, "tags: v* keeps it"},
		{"stable", true, "it is immutable and nothing releases it"},
		{"build-1", true, "it was pulled 30 minutes ago (pulled_within: 1h)"},
		{"build-2", false, "no rule keeps it"},
		{"build-3", false, "no rule keeps it"},
		{"build-4", true, "it is one of the 2 most recent"},
		{"build-5", true, "it is the most recent"},
	}
	got := outcomes(res)
	for _, tc := range tests {
		t.Run(tc.tag, func(t *testing.T) {
			b := f.binding(t, repo, tc.tag)
			served := f.served(t, repo, tc.tag)
			if tc.kept {
				if served != b.Digest || b.Deleted || got[tc.tag] != "" {
					t.Errorf("%s should be kept (%s): served %q, tombstone %v, outcome %q", tc.tag, tc.why, served, b.Deleted, got[tc.tag])
				}
				return
			}
			if served != "" || !b.Deleted || got[tc.tag] != OutcomeDeleted {
				t.Errorf("%s should be deleted (%s): served %q, tombstone %v, outcome %q", tc.tag, tc.why, served, b.Deleted, got[tc.tag])
			}
			if got["@"+b.Digest.String()] != OutcomeDeleted || f.served(t, repo, b.Digest.String()) != "" {
				t.Errorf("the manifest of %s, which no tag is left on, should be deleted too: outcome %q", tc.tag, got["@"+b.Digest.String()])
			}
			h, err := f.ledger.History(ctx, repo, tc.tag, 1)
			if err != nil || len(h) != 1 || h[0].Kind != storage.EventDeleted || h[0].User != "taglock retention" {
				t.Errorf("history of %s = %+v, %v; want a deletion by taglock retention", tc.tag, h, err)
			}
		})
	}
	if res.Deleted != 4 || res.Failed != 0 || res.Skipped != 0 {
		t.Errorf("result: %d deleted, %d skipped, %d failed; want 4 (2 tags, then their manifests), 0, 0", res.Deleted, res.Skipped, res.Failed)
	}
}

// TestApplyReleasesImmutableTagsAfterReleaseAfter ensures that an
// immutable tag no rule keeps is kept until release_after has passed since
// its push, then released: deleted upstream, with a tombstone that still
// records it as immutable, so it can only ever come back with its digest.
func TestApplyReleasesImmutableTagsAfterReleaseAfter(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const repo = "team/app"
	d := f.push(t, repo, "1.0", "one")
	pol := retain(0, tags("v*"))
	pol.Policies[0].Immutable.ReleaseAfter = 24 * time.Hour

	f.advance(time.Hour)
	if res := mustApply(t, f.runner(pol)); len(res.Deletions) != 0 || f.served(t, repo, "1.0") != d {
		t.Fatalf("an hour after its push, 1.0 should be kept: deletions %+v", res.Deletions)
	}
	f.advance(24 * time.Hour)
	res := mustApply(t, f.runner(pol))
	if len(res.Deletions) != 2 || !res.Deletions[0].Released || res.Deletions[0].Outcome != OutcomeDeleted || res.Deletions[1].Digest != d {
		t.Fatalf("after release_after, deletions = %+v; want 1.0 released, then its manifest deleted", res.Deletions)
	}
	b := f.binding(t, repo, "1.0")
	if f.served(t, repo, "1.0") != "" || !b.Deleted || b.Mode != policy.Immutable || b.Digest != d {
		t.Errorf("released 1.0: served %q, binding %+v; want gone upstream and an immutable tombstone on %s", f.served(t, repo, "1.0"), b, d)
	}
	other := f.image(t, repo, "other")
	if rec := request(f.proxy, http.MethodPut, "/v2/"+repo+"/manifests/1.0", v1.MediaTypeImageManifest, other); rec.Code != http.StatusForbidden {
		t.Errorf("pushing other content to the released 1.0: %d, want 403", rec.Code)
	}
}

// TestApplyKeepsWhatALiveTagReaches ensures that the manifests a kept tag
// reaches (an index's platform images) are kept even though no tag names
// them, while an index whose tag is deleted goes with its images, and an
// untagged manifest nothing reaches is deleted once its grace period is
// over.
func TestApplyKeepsWhatALiveTagReaches(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	const repo = "team/app"
	kept, keptKids := f.pushIndex(t, repo, "v2", "kept")
	gone, goneKids := f.pushIndex(t, repo, "multi", "gone")
	orphan := f.pushUntagged(t, repo, "orphan")

	r := f.runner(retain(time.Hour, tags("v*")))
	if _, err := r.Plan(ctx); err != nil { // retention first sees the untagged manifests
		t.Fatal(err)
	}
	f.advance(2 * time.Hour)
	res := mustApply(t, r)

	for _, d := range append([]digest.Digest{kept}, keptKids...) {
		if f.served(t, repo, d.String()) != d {
			t.Errorf("%s, reached from v2, was deleted", d)
		}
	}
	for _, d := range append([]digest.Digest{gone, orphan}, goneKids...) {
		if f.served(t, repo, d.String()) != "" {
			t.Errorf("%s, which no live tag reaches, is still there", d)
		}
	}
	got := outcomes(res)
	if got["multi"] != OutcomeDeleted {
		t.Errorf("outcome of multi = %q, want deleted (all: %v)", got["multi"], got)
	}
	if n := len(res.Deletions); n != 1+1+len(goneKids)+1 {
		t.Errorf("%d deletions, want the tag multi, its index, its 2 images and the orphan: %v", n, got)
	}
}

// TestUntaggedManifestsWaitOutTheirGrace ensures that an untagged manifest
// is kept until the grace period has passed since retention first saw it
// (not since it was pushed), then deleted.
func TestUntaggedManifestsWaitOutTheirGrace(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const repo = "team/app"
	f.push(t, repo, "v1", "v1")
	f.advance(30 * 24 * time.Hour) // pushed long ago, but not yet seen by retention
	orphan := f.pushUntagged(t, repo, "orphan")
	r := f.runner(retain(2*time.Hour, tags("v*")))

	for _, step := range []struct {
		after time.Duration
		kept  bool
	}{
		{0, true},                 // first seen now
		{time.Hour, true},         // an hour into the grace period
		{61 * time.Minute, false}, // past it
	} {
		f.advance(step.after)
		res := mustApply(t, r)
		if kept := f.served(t, repo, orphan.String()) != ""; kept != step.kept {
			t.Fatalf("%v after the last run: orphan kept = %v, want %v (deletions %+v)", step.after, kept, step.kept, res.Deletions)
		}
	}
}

// TestPlanChangesNothing ensures that Plan, the dry run, reports what a run
// would delete and deletes nothing: every tag is still served and still
// live in the ledger, and no run is left pending. Apply then deletes what
// the plan said.
func TestPlanChangesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	const repo = "team/app"
	for _, tag := range []string{"v1", "build-1", "build-2"} {
		f.push(t, repo, tag, tag)
	}
	r := f.runner(retain(0, tags("v*")))
	rep, err := r.Plan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Plans) != 1 || !slices.Equal(rep.Plans[0].DeleteTags(), []string{"build-1", "build-2"}) {
		t.Fatalf("plan = %+v, want build-1 and build-2 deleted", rep.Plans)
	}
	if got := f.upstreamTags(t, repo); !slices.Equal(got, []string{"build-1", "build-2", "v1"}) {
		t.Errorf("upstream tags after a plan = %v, want all three", got)
	}
	for _, tag := range []string{"build-1", "build-2"} {
		if f.binding(t, repo, tag).Deleted {
			t.Errorf("%s is a tombstone after a plan", tag)
		}
	}
	if p, err := r.Pending(ctx); err != nil || p != nil {
		t.Errorf("pending after a plan = %+v, %v; want none", p, err)
	}
	mustApply(t, r)
	if got := f.upstreamTags(t, repo); !slices.Equal(got, []string{"v1"}) {
		t.Errorf("upstream tags after apply = %v, want [v1]", got)
	}
}

// TestApplyRefusesAPlanOverMaxDeletions ensures that a plan deleting more
// than max_deletions is refused with ErrTooManyDeletions before anything
// is deleted.
func TestApplyRefusesAPlanOverMaxDeletions(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const repo = "team/app"
	for _, tag := range []string{"v1", "build-1", "build-2", "build-3"} {
		f.push(t, repo, tag, tag)
	}
	pol := retain(0, tags("v*"))
	pol.MaxDeletions = 2
	res, err := f.runner(pol).Apply(context.Background(), ApplyOptions{})
	if !errors.Is(err, ErrTooManyDeletions) {
		t.Fatalf("apply = %v, want ErrTooManyDeletions", err)
	}
	if !res.Report.OverLimit || len(res.Deletions) != 0 {
		t.Errorf("result: over limit %v, deletions %+v", res.Report.OverLimit, res.Deletions)
	}
	if got := f.upstreamTags(t, repo); len(got) != 4 {
		t.Errorf("upstream tags after a refused run = %v, want all four", got)
	}
}
