package policy

import (
	"errors"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// now is the injected clock of every retention test.
var now = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

const day = 24 * time.Hour

func ago(d time.Duration) time.Time { return now.Add(-d) }

// dg names a test digest.
func dg(name string) digest.Digest { return digest.FromString(name) }

// tagAt is a live tag pointing at dg(img), first pushed pushedAgo ago.
func tagAt(name, img string, pushedAgo time.Duration, mode Mode) TagState {
	return TagState{Tag: name, Digest: dg(img), PushedAt: ago(pushedAgo), Mode: mode}
}

// sigTag is the cosign signature tag of dg(img).
func sigTag(img string) string { return "sha256-" + dg(img).Encoded() + ".sig" }

func keepTags(patterns ...string) KeepRule {
	gs := make(Globs, len(patterns))
	for i, p := range patterns {
		gs[i] = MustGlob(p)
	}
	return KeepRule{Tags: gs}
}

// planWant is what a test expects of a plan. Digests are named as for dg.
type planWant struct {
	keptTags, deletedTags []string
	released              []string
	// keptManifests and deletedManifests cover Manifests, the manifests no
	// kept tag points to; deleteOrder lists digests that must be deleted
	// in this relative order.
	keptManifests, deletedManifests []string
	deleteOrder                     []string
	// reasons maps a tag, or "@" and a manifest's name, to a substring of
	// its reason.
	reasons map[string]string
}

func checkPlan(t *testing.T, plan RetentionPlan, w planWant) {
	t.Helper()
	var kept, deleted, released []string
	tagReason := map[string]string{}
	for _, d := range plan.Tags {
		tagReason[d.Tag] = d.Reason
		if d.Kept {
			kept = append(kept, d.Tag)
			if len(d.KeptBy) == 0 {
				t.Errorf("kept tag %s has no KeptBy", d.Tag)
			}
		} else {
			deleted = append(deleted, d.Tag)
		}
		if d.Released {
			released = append(released, d.Tag)
		}
	}
	eq := func(what string, got, want []string) {
		t.Helper()
		slices.Sort(got)
		want = slices.Sorted(slices.Values(want))
		if !slices.Equal(got, want) {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}
	eq("kept tags", kept, w.keptTags)
	eq("deleted tags", deleted, w.deletedTags)
	eq("released tags", released, w.released)

	names := map[digest.Digest]string{}
	for _, n := range append(append(append([]string{}, w.keptManifests...), w.deletedManifests...), w.deleteOrder...) {
		names[dg(n)] = n
	}
	for n := range w.reasons {
		if m, ok := strings.CutPrefix(n, "@"); ok {
			names[dg(m)] = m
		}
	}
	name := func(d digest.Digest) string {
		if n, ok := names[d]; ok {
			return n
		}
		return string(d)
	}
	var keptM, deletedM []string
	manReason := map[string]string{}
	for _, m := range plan.Manifests {
		manReason[name(m.Digest)] = m.Reason
		if m.Kept {
			keptM = append(keptM, name(m.Digest))
		} else {
			deletedM = append(deletedM, name(m.Digest))
		}
	}
	eq("kept manifests", keptM, w.keptManifests)
	eq("deleted manifests", deletedM, w.deletedManifests)
	if w.deleteOrder != nil {
		var order []string
		for _, d := range plan.DeleteOrder {
			order = append(order, name(d))
		}
		pos := -1
		for _, n := range w.deleteOrder {
			i := slices.Index(order, n)
			if i <= pos {
				t.Errorf("delete order = %v, want %v in that order", order, w.deleteOrder)
				break
			}
			pos = i
		}
	}
	if len(plan.DeleteOrder) != len(w.deletedManifests) {
		t.Errorf("DeleteOrder has %d digests, want %d", len(plan.DeleteOrder), len(w.deletedManifests))
	}
	for k, sub := range w.reasons {
		r, ok := tagReason[k]
		if m, isManifest := strings.CutPrefix(k, "@"); isManifest {
			r, ok = manReason[m]
		}
		if !ok {
			t.Errorf("no decision for %s", k)
		} else if !strings.Contains(r, sub) {
			t.Errorf("reason for %s = %q, want it to contain %q", k, r, sub)
		}
	}
	if plan.Totals.TagsKept != len(w.keptTags) || plan.Totals.TagsDeleted != len(w.deletedTags) ||
		plan.Totals.TagsReleased != len(w.released) || plan.Totals.ManifestsKept != len(w.keptManifests) ||
		plan.Totals.ManifestsDeleted != len(w.deletedManifests) {
		t.Errorf("totals %+v do not match the decisions", plan.Totals)
	}
}

// TestPlanKeepRules ensures each keep rule retains exactly the tags the
// configuration describes, and a tag survives if any rule retains it.
func TestPlanKeepRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		keep  []KeepRule
		tags  []TagState
		want  planWant
		extra func(t *testing.T, p RetentionPlan)
	}{
		{
			name: "a tags rule keeps every release tag and nothing else",
			keep: []KeepRule{keepTags("v*")},
			tags: []TagState{tagAt("v1", "a", 400*day, Mutable), tagAt("v2", "b", 300*day, Mutable), tagAt("dev-1", "c", 200*day, Mutable)},
			want: planWant{keptTags: []string{"v1", "v2"}, deletedTags: []string{"dev-1"}, deletedManifests: []string{"c"},
				reasons: map[string]string{"v1": "kept by keep[0] (tags: v*)", "dev-1": "no keep rule retains it", "@c": "the plan deletes dev-1"}},
		},
		{
			name: "most_recent keeps the N most recently pushed tags",
			keep: []KeepRule{{MostRecent: 2}},
			tags: []TagState{tagAt("t1", "a", 4*day, Mutable), tagAt("t2", "b", 3*day, Mutable), tagAt("t3", "c", 2*day, Mutable), tagAt("t4", "d", 1*day, Mutable)},
			want: planWant{keptTags: []string{"t3", "t4"}, deletedTags: []string{"t1", "t2"}, deletedManifests: []string{"a", "b"},
				reasons: map[string]string{"t4": "most_recent: 2, it is number 1 by push time", "t3": "number 2"}},
		},
		{
			name: "most_recent breaks ties in push time by tag name",
			keep: []KeepRule{{MostRecent: 2}},
			tags: []TagState{tagAt("c", "c", day, Mutable), tagAt("a", "a", day, Mutable), tagAt("b", "b", day, Mutable)},
			want: planWant{keptTags: []string{"a", "b"}, deletedTags: []string{"c"}, deletedManifests: []string{"c"}},
		},
		{
			name: "most_recent orders by first push, so a recent pull or re-push does not make a tag recent",
			keep: []KeepRule{{MostRecent: 1}},
			tags: []TagState{
				{Tag: "old", Digest: dg("a"), PushedAt: ago(30 * day), LastPulled: ago(time.Minute), Mode: Mutable},
				tagAt("new", "b", day, Mutable),
			},
			want: planWant{keptTags: []string{"new"}, deletedTags: []string{"old"}, deletedManifests: []string{"a"}},
		},
		{
			name: "pushed_within keeps tags pushed within the period, its boundary included",
			keep: []KeepRule{{PushedWithin: 720 * time.Hour}},
			tags: []TagState{tagAt("fresh", "a", day, Mutable), tagAt("edge", "b", 30*day, Mutable), tagAt("stale", "c", 30*day+time.Second, Mutable)},
			want: planWant{keptTags: []string{"fresh", "edge"}, deletedTags: []string{"stale"}, deletedManifests: []string{"c"},
				reasons: map[string]string{"fresh": "pushed_within: 720h, pushed 24h ago"}},
		},
		{
			name: "pulled_within keeps tags still in use",
			keep: []KeepRule{{PulledWithin: 168 * time.Hour}},
			tags: []TagState{
				{Tag: "used", Digest: dg("a"), PushedAt: ago(90 * day), LastPulled: ago(2 * time.Hour), Mode: Mutable},
				{Tag: "unused", Digest: dg("b"), PushedAt: ago(90 * day), LastPulled: ago(8 * day), Mode: Mutable},
				tagAt("never", "c", 90*day, Mutable),
			},
			want: planWant{keptTags: []string{"used"}, deletedTags: []string{"unused", "never"}, deletedManifests: []string{"b", "c"},
				reasons: map[string]string{"used": "pulled_within: 168h, pulled 2h ago"}},
		},
		{
			name: "the criteria of one rule combine: the most recent release tag",
			keep: []KeepRule{{Tags: Globs{MustGlob("v*")}, MostRecent: 1}},
			tags: []TagState{tagAt("v1", "a", 3*day, Mutable), tagAt("v2", "b", 2*day, Mutable), tagAt("dev", "c", day, Mutable)},
			want: planWant{keptTags: []string{"v2"}, deletedTags: []string{"v1", "dev"}, deletedManifests: []string{"a", "c"},
				reasons: map[string]string{"v2": "tags: v*; most_recent: 1, it is number 1"}},
		},
		{
			name: "a tag survives if any keep rule retains it, and every such rule is listed",
			keep: []KeepRule{keepTags("v*"), {MostRecent: 1, Name: "newest"}, {PushedWithin: 48 * time.Hour}},
			tags: []TagState{tagAt("v9", "a", day, Mutable), tagAt("x", "b", 40*time.Hour, Mutable), tagAt("y", "c", 50*time.Hour, Mutable)},
			want: planWant{keptTags: []string{"v9", "x"}, deletedTags: []string{"y"}, deletedManifests: []string{"c"},
				reasons: map[string]string{"v9": "kept by keep[0] (tags: v*)", "x": "kept by keep[2]"}},
			extra: func(t *testing.T, p RetentionPlan) {
				if got := p.Tags[0].KeptBy; !slices.Equal(got, []string{"keep[0]", "newest", "keep[2]"}) {
					t.Errorf("v9 KeptBy = %v", got)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			plan := Plan(now, RetentionPolicy{Keep: tc.keep}, RepoState{Repository: "ci/app", Tags: tc.tags})
			checkPlan(t, plan, tc.want)
			if tc.extra != nil {
				tc.extra(t, plan)
			}
		})
	}
}

// TestPlanImmutable ensures immutable tags never block cleanup and are never
// lost by it: kept by default, released after release_after only when no
// keep rule retains them.
func TestPlanImmutable(t *testing.T) {
	t.Parallel()
	tags := []TagState{
		tagAt("v1", "a", 100*day, Immutable),
		tagAt("v2", "b", 10*day, Immutable),
		tagAt("rel-1", "c", 100*day, Immutable),
		tagAt("scratch", "d", 100*day, Mutable),
		tagAt("warned", "e", 100*day, Warn),
		tagAt("odd", "f", 100*day, Mode(9)),
	}
	keep := []KeepRule{keepTags("rel-*")}
	tests := []struct {
		name      string
		immutable ImmutableRetention
		want      planWant
	}{
		{"immutable tags are kept by default while mutable and warn tags are cleaned up", ImmutableRetention{},
			planWant{keptTags: []string{"v1", "v2", "rel-1", "odd"}, deletedTags: []string{"scratch", "warned"},
				deletedManifests: []string{"d", "e"},
				reasons:          map[string]string{"v1": "immutable: keep", "rel-1": "kept by keep[0]", "odd": "immutable"}}},
		{"immutable tags older than release_after are released unless a keep rule retains them",
			ImmutableRetention{ReleaseAfter: 90 * day},
			planWant{keptTags: []string{"v2", "rel-1"}, deletedTags: []string{"v1", "odd", "scratch", "warned"},
				released: []string{"v1", "odd"}, deletedManifests: []string{"a", "d", "e", "f"},
				reasons: map[string]string{
					"v1": "no keep rule retains it; immutable, pushed 2400h ago, past release_after 2160h: released, it stays bound in the ledger as a tombstone",
					"v2": "immutable, pushed 240h ago; released only after 2160h"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := RetentionPolicy{Keep: keep, Immutable: tc.immutable}
			checkPlan(t, Plan(now, p, RepoState{Tags: tags}), tc.want)
		})
	}
	t.Run("release_after compares the exact age, not the age rounded to seconds", func(t *testing.T) {
		t.Parallel()
		in := RepoState{Tags: []TagState{{Tag: "v1", Digest: dg("a"), PushedAt: now.Add(-400 * time.Millisecond), Mode: Immutable}}}
		p := RetentionPolicy{Keep: []KeepRule{keepTags("rel-*")}, Immutable: ImmutableRetention{ReleaseAfter: time.Millisecond}}
		checkPlan(t, Plan(now, p, in), planWant{deletedTags: []string{"v1"}, released: []string{"v1"}, deletedManifests: []string{"a"}})
	})
}

// TestPlanFailsSafe ensures what the plan cannot judge is kept: unknown push
// times, tags the ledger does not know, a policy without keep rules.
func TestPlanFailsSafe(t *testing.T) {
	t.Parallel()
	t.Run("a tag whose push time is unknown is kept", func(t *testing.T) {
		t.Parallel()
		in := RepoState{Tags: []TagState{{Tag: "imported", Digest: dg("a"), Mode: Mutable}, tagAt("old", "b", 99*day, Mutable)}}
		checkPlan(t, Plan(now, RetentionPolicy{Keep: []KeepRule{{MostRecent: 1}}}, in), planWant{
			keptTags: []string{"imported", "old"}, reasons: map[string]string{"imported": "first pushed is unknown"}})
	})
	t.Run("a policy without keep rules keeps every tag", func(t *testing.T) {
		t.Parallel()
		in := RepoState{Tags: []TagState{tagAt("x", "a", 99*day, Mutable)}}
		checkPlan(t, Plan(now, RetentionPolicy{}, in), planWant{keptTags: []string{"x"},
			reasons: map[string]string{"x": "no keep rules"}})
	})
	t.Run("a manifest the upstream lists tags for that the ledger does not know is never deleted", func(t *testing.T) {
		t.Parallel()
		in := RepoState{
			Tags:      []TagState{tagAt("old", "a", 99*day, Mutable)},
			Manifests: []ManifestState{{Digest: dg("u"), Tagged: true, FirstSeen: ago(99 * day)}, {Digest: dg("a"), Tagged: true}},
		}
		p := RetentionPolicy{Keep: []KeepRule{{MostRecent: 0, PushedWithin: time.Hour}}, Untagged: UntaggedDelete}
		checkPlan(t, Plan(now, p, in), planWant{deletedTags: []string{"old"}, keptManifests: []string{"u"},
			deletedManifests: []string{"a"}, reasons: map[string]string{"@u": "the ledger does not know"}})
	})
	t.Run("duplicate manifest entries are merged, so any entry's tags, links and pulls count", func(t *testing.T) {
		t.Parallel()
		in := RepoState{
			Tags: []TagState{tagAt("v1", "idx", 99*day, Mutable)},
			Manifests: []ManifestState{
				{Digest: dg("u"), FirstSeen: ago(99 * day)},
				{Digest: dg("u"), Tagged: true},
				{Digest: dg("idx"), Size: 10},
				{Digest: dg("idx"), Children: []digest.Digest{dg("c")}},
				{Digest: dg("p"), FirstSeen: ago(99 * day)},
				{Digest: dg("p"), FirstSeen: ago(98 * day), LastPulled: ago(time.Hour)},
				{Digest: dg("p"), LastPulled: ago(50 * day)},
			},
		}
		p := RetentionPolicy{Keep: []KeepRule{keepTags("v*"), {PulledWithin: day}}, Untagged: UntaggedDelete}
		checkPlan(t, Plan(now, p, in), planWant{keptTags: []string{"v1"}, keptManifests: []string{"u", "c", "p"},
			reasons: map[string]string{"@u": "the ledger does not know", "@c": "child of", "@p": "pulled by digest 1h ago"}})
	})
	t.Run("tombstones are not planned again", func(t *testing.T) {
		t.Parallel()
		in := RepoState{Tags: []TagState{
			{Tag: "gone", Digest: dg("a"), PushedAt: ago(99 * day), Deleted: true},
			tagAt("v1", "a", 99*day, Immutable),
		}}
		checkPlan(t, Plan(now, RetentionPolicy{Keep: []KeepRule{keepTags("v*")}}, in), planWant{keptTags: []string{"v1"}})
	})
}

// TestPlanSharedDigests ensures deleting one tag never takes a digest
// another tag still needs, and a digest goes only when no tag is left.
func TestPlanSharedDigests(t *testing.T) {
	t.Parallel()
	keep := []KeepRule{keepTags("v*")}
	tests := []struct {
		name      string
		tags      []TagState
		manifests []ManifestState
		want      planWant
	}{
		{"a digest a kept tag also points to is not deleted",
			[]TagState{tagAt("build-7", "a", 99*day, Mutable), tagAt("v1", "a", 99*day, Mutable)},
			[]ManifestState{{Digest: dg("a"), Size: 100}},
			planWant{keptTags: []string{"v1"}, deletedTags: []string{"build-7"}}},
		{"a digest whose every tag is deleted is deleted once, naming the tags",
			[]TagState{tagAt("b1", "a", 99*day, Mutable), tagAt("b2", "a", 98*day, Mutable)},
			[]ManifestState{{Digest: dg("a"), Size: 100}},
			planWant{deletedTags: []string{"b1", "b2"}, deletedManifests: []string{"a"},
				reasons: map[string]string{"@a": "no tag is left on it: the plan deletes b1, b2"}}},
		{"a child of a kept index stays although its own tag is deleted",
			[]TagState{tagAt("v1", "idx", 99*day, Mutable), tagAt("amd64-old", "amd64", 99*day, Mutable)},
			[]ManifestState{{Digest: dg("idx"), Children: []digest.Digest{dg("amd64"), dg("arm64")}}},
			planWant{keptTags: []string{"v1"}, deletedTags: []string{"amd64-old"}, keptManifests: []string{"amd64", "arm64"},
				reasons: map[string]string{"@amd64": "child of " + string(dg("idx")) + ", which is kept"}}},
		{"the children of a deleted index go with it, after it",
			[]TagState{tagAt("old", "idx", 99*day, Mutable)},
			[]ManifestState{{Digest: dg("idx"), Children: []digest.Digest{dg("amd64"), dg("arm64")}}},
			planWant{deletedTags: []string{"old"}, deletedManifests: []string{"idx", "amd64", "arm64"},
				deleteOrder: []string{"idx", "arm64"},
				reasons:     map[string]string{"@arm64": "child of " + string(dg("idx")) + ", which is deleted"}}},
		{"a child shared with a kept index stays while the deleted index's own children go",
			[]TagState{tagAt("v1", "i1", 99*day, Mutable), tagAt("old", "i2", 99*day, Mutable)},
			[]ManifestState{
				{Digest: dg("i1"), Children: []digest.Digest{dg("c1"), dg("shared")}},
				{Digest: dg("i2"), Children: []digest.Digest{dg("shared"), dg("c3")}},
			},
			planWant{keptTags: []string{"v1"}, deletedTags: []string{"old"}, keptManifests: []string{"c1", "shared"},
				deletedManifests: []string{"i2", "c3"}, deleteOrder: []string{"i2", "c3"}}},
		{"a nested index keeps its grandchildren",
			[]TagState{tagAt("v1", "top", 99*day, Mutable)},
			[]ManifestState{{Digest: dg("top"), Children: []digest.Digest{dg("mid")}}, {Digest: dg("mid"), Children: []digest.Digest{dg("leaf")}}},
			planWant{keptTags: []string{"v1"}, keptManifests: []string{"mid", "leaf"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			plan := Plan(now, RetentionPolicy{Keep: keep, Untagged: UntaggedDelete}, RepoState{Tags: tc.tags, Manifests: tc.manifests})
			checkPlan(t, plan, tc.want)
		})
	}
}

// TestPlanReferrers ensures signatures, SBOMs and attestations follow their
// subject: kept with it, deleted with it, whether linked by subject or by a
// sha256-<hex> tag.
func TestPlanReferrers(t *testing.T) {
	t.Parallel()
	keep := []KeepRule{keepTags("v*")}
	sigOfImg := sigTag("img")
	tests := []struct {
		name      string
		policy    RetentionPolicy
		tags      []TagState
		manifests []ManifestState
		want      planWant
	}{
		{"a referrer of a kept image is kept although it is untagged and old",
			RetentionPolicy{Keep: keep, Untagged: UntaggedDelete},
			[]TagState{tagAt("v1", "img", 99*day, Mutable)},
			[]ManifestState{{Digest: dg("sig"), Subject: dg("img"), FirstSeen: ago(99 * day)}},
			planWant{keptTags: []string{"v1"}, keptManifests: []string{"sig"},
				reasons: map[string]string{"@sig": "referrer of " + string(dg("img")) + ", which is kept"}}},
		{"referrers of a deleted image go with it, before it, even under untagged: keep",
			RetentionPolicy{Keep: keep},
			[]TagState{tagAt("old", "img", 99*day, Mutable)},
			[]ManifestState{{Digest: dg("sig"), Subject: dg("img")}, {Digest: dg("sbom"), Subject: dg("img")}},
			planWant{deletedTags: []string{"old"}, deletedManifests: []string{"img", "sig", "sbom"}, deleteOrder: []string{"sig", "img"},
				reasons: map[string]string{"@sig": "referrer of " + string(dg("img")) + ", which is deleted"}}},
		{"a signature tag is kept while its image is kept",
			RetentionPolicy{Keep: keep},
			[]TagState{tagAt("v1", "img", 99*day, Mutable), tagAt(sigOfImg, "sig", 99*day, Mutable)},
			nil,
			planWant{keptTags: []string{"v1", sigOfImg},
				reasons: map[string]string{sigOfImg: "referrer tag of " + string(dg("img")) + ", which is kept"}}},
		{"a signature tag is deleted with its image",
			RetentionPolicy{Keep: keep},
			[]TagState{tagAt("old", "img", 99*day, Mutable), tagAt(sigOfImg, "sig", 99*day, Mutable)},
			nil,
			planWant{deletedTags: []string{"old", sigOfImg}, deletedManifests: []string{"img", "sig"},
				reasons: map[string]string{sigOfImg: "its subject " + string(dg("img")) + " is deleted"}}},
		{"a referrers fallback index keeps the referrers it lists while the subject is kept",
			RetentionPolicy{Keep: keep, Untagged: UntaggedDelete},
			[]TagState{tagAt("v1", "img", 99*day, Mutable), tagAt("sha256-"+dg("img").Encoded(), "refidx", 99*day, Mutable)},
			[]ManifestState{{Digest: dg("refidx"), Children: []digest.Digest{dg("sig")}}, {Digest: dg("sig"), Subject: dg("img")}},
			planWant{keptTags: []string{"v1", "sha256-" + dg("img").Encoded()}, keptManifests: []string{"sig"}}},
		{"referrer tags do not count for most_recent, so signatures cannot crowd images out",
			RetentionPolicy{Keep: []KeepRule{{MostRecent: 1}}},
			[]TagState{tagAt("b1", "old", 5*day, Mutable), tagAt("b2", "img", 4*day, Mutable), tagAt(sigOfImg, "sig", time.Hour, Mutable)},
			nil,
			planWant{keptTags: []string{"b2", sigOfImg}, deletedTags: []string{"b1"}, deletedManifests: []string{"old"}}},
		{"a signature tag whose image is unknown follows the keep rules",
			RetentionPolicy{Keep: keep},
			[]TagState{tagAt(sigTag("elsewhere"), "sig", 99*day, Mutable)},
			nil,
			planWant{deletedTags: []string{sigTag("elsewhere")}, deletedManifests: []string{"sig"},
				reasons: map[string]string{sigTag("elsewhere"): ReasonNoKeepRule}}},
		{"a signature of a signature follows the chain",
			RetentionPolicy{Keep: keep},
			[]TagState{tagAt("v1", "img", 99*day, Mutable), tagAt(sigOfImg, "sig", 99*day, Mutable), tagAt(sigTag("sig"), "sigsig", 99*day, Mutable)},
			nil,
			planWant{keptTags: []string{"v1", sigOfImg, sigTag("sig")}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			checkPlan(t, Plan(now, tc.policy, RepoState{Tags: tc.tags, Manifests: tc.manifests}), tc.want)
		})
	}
}

// TestPlanUntagged ensures untagged manifests are kept or deleted by the
// untagged setting, only after the grace period, and never while something
// kept needs them.
func TestPlanUntagged(t *testing.T) {
	t.Parallel()
	manifests := []ManifestState{
		{Digest: dg("old"), FirstSeen: ago(3 * day), Size: 1000},
		{Digest: dg("young"), FirstSeen: ago(time.Hour)},
		{Digest: dg("unseen")},
		{Digest: dg("newidx"), FirstSeen: ago(time.Minute), Children: []digest.Digest{dg("oldchild")}},
		{Digest: dg("oldchild"), FirstSeen: ago(30 * day)},
		{Digest: dg("pinned"), FirstSeen: ago(60 * day), LastPulled: ago(time.Hour)},
	}
	keep := []KeepRule{keepTags("v*"), {PulledWithin: 168 * time.Hour}}
	tests := []struct {
		name   string
		policy RetentionPolicy
		want   planWant
	}{
		{"untagged: keep keeps every untagged manifest", RetentionPolicy{Keep: keep},
			planWant{keptManifests: []string{"old", "young", "unseen", "newidx", "oldchild", "pinned"},
				reasons: map[string]string{"@old": "untagged: keep"}}},
		{"untagged: delete deletes only past the default grace period", RetentionPolicy{Keep: keep, Untagged: UntaggedDelete},
			planWant{keptManifests: []string{"young", "unseen", "newidx", "oldchild", "pinned"}, deletedManifests: []string{"old"},
				reasons: map[string]string{
					"@old":      "untagged for 72h, past the 24h grace period",
					"@young":    "untagged for 1h, within the 24h grace period",
					"@unseen":   "first seen is unknown",
					"@oldchild": "child of " + string(dg("newidx")),
					"@pinned":   "kept by keep[1] (pulled_within: 168h): pulled by digest 1h ago"}}},
		{"a custom grace period applies", RetentionPolicy{Keep: keep, Untagged: UntaggedDelete, UntaggedGrace: 30 * time.Minute},
			planWant{keptManifests: []string{"unseen", "newidx", "oldchild", "pinned"}, deletedManifests: []string{"old", "young"}}},
		{"a pulled_within rule with other criteria does not keep digests pulled by digest",
			RetentionPolicy{Keep: []KeepRule{{Tags: Globs{MustGlob("v*")}, PulledWithin: 168 * time.Hour}}, Untagged: UntaggedDelete},
			planWant{keptManifests: []string{"young", "unseen", "newidx", "oldchild"}, deletedManifests: []string{"old", "pinned"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			checkPlan(t, Plan(now, tc.policy, RepoState{Manifests: manifests}), tc.want)
		})
	}
}

// TestPlanFinishesInterruptedRuns ensures a digest whose tags were already
// deleted (only tombstones point to it) is deleted on the next run, even
// under untagged: keep, so an interrupted run completes.
func TestPlanFinishesInterruptedRuns(t *testing.T) {
	t.Parallel()
	in := RepoState{
		Tags: []TagState{{Tag: "old", Digest: dg("a"), PushedAt: ago(99 * day), Deleted: true}, tagAt("v1", "b", 99*day, Mutable)},
		Manifests: []ManifestState{
			{Digest: dg("a"), FirstSeen: ago(99 * day), Children: []digest.Digest{dg("a-amd64")}},
			{Digest: dg("b")},
		},
	}
	checkPlan(t, Plan(now, RetentionPolicy{Keep: []KeepRule{keepTags("v*")}}, in), planWant{
		keptTags: []string{"v1"}, deletedManifests: []string{"a", "a-amd64"}, deleteOrder: []string{"a", "a-amd64"},
		reasons: map[string]string{"@a": "its tags were deleted earlier (tombstones: old); finishing that deletion"}})
}

// TestPlanTotals ensures the totals count decisions and sum the known sizes
// of deleted digests, and max_deletions is checked against tags plus
// manifests.
func TestPlanTotals(t *testing.T) {
	t.Parallel()
	in := RepoState{
		Tags: []TagState{tagAt("a", "a", 9*day, Mutable), tagAt("b", "b", 9*day, Mutable), tagAt("v1", "v", 9*day, Mutable)},
		Manifests: []ManifestState{
			{Digest: dg("a"), Size: 1500}, {Digest: dg("b")}, {Digest: dg("v"), Size: 7},
		},
	}
	plan := Plan(now, RetentionPolicy{Keep: []KeepRule{keepTags("v*")}}, in)
	want := RetentionTotals{TagsKept: 1, TagsDeleted: 2, ManifestsDeleted: 2, BytesFreed: 1500, UnknownSizes: 1}
	if plan.Totals != want {
		t.Fatalf("totals = %+v, want %+v", plan.Totals, want)
	}
	if got := plan.DeleteTags(); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("DeleteTags() = %v", got)
	}
	for _, tc := range []struct {
		max  int
		want bool
	}{{0, false}, {-1, false}, {4, false}, {3, true}, {1, true}} {
		if got := plan.Exceeds(tc.max); got != tc.want {
			t.Errorf("Exceeds(%d) with 4 deletions = %v, want %v", tc.max, got, tc.want)
		}
	}
	sum := plan.Totals.Add(plan.Totals)
	if sum.Deletions() != 8 || sum.BytesFreed != 3000 || sum.UnknownSizes != 2 || !sum.Exceeds(7) {
		t.Errorf("Add = %+v", sum)
	}
}

// TestPlanIsDeterministic ensures the same state in any input order gives
// the same plan, sorted, and planning leaves the input untouched.
func TestPlanIsDeterministic(t *testing.T) {
	t.Parallel()
	in := realisticRepo()
	p := issuePolicy()
	want := Plan(now, p, in)
	if !reflect.DeepEqual(in, realisticRepo()) {
		t.Error("Plan modified its input")
	}
	if !slices.IsSortedFunc(want.Tags, func(a, b TagDecision) int { return strings.Compare(a.Tag, b.Tag) }) {
		t.Error("tags are not sorted")
	}
	if !slices.IsSortedFunc(want.Manifests, func(a, b ManifestDecision) int { return strings.Compare(string(a.Digest), string(b.Digest)) }) {
		t.Error("manifests are not sorted")
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20 {
		shuffled := RepoState{Repository: in.Repository, Tags: slices.Clone(in.Tags), Manifests: slices.Clone(in.Manifests)}
		r.Shuffle(len(shuffled.Tags), func(i, j int) { shuffled.Tags[i], shuffled.Tags[j] = shuffled.Tags[j], shuffled.Tags[i] })
		r.Shuffle(len(shuffled.Manifests), func(i, j int) {
			shuffled.Manifests[i], shuffled.Manifests[j] = shuffled.Manifests[j], shuffled.Manifests[i]
		})
		if got := Plan(now, p, shuffled); !reflect.DeepEqual(got, want) {
			t.Fatalf("shuffle %d gives a different plan", i)
		}
	}
}

// TestUntaggedActionText ensures untagged parses from its two spellings.
func TestUntaggedActionText(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"keep", "delete"} {
		var a UntaggedAction
		if err := a.UnmarshalText([]byte(s)); err != nil || a.String() != s {
			t.Errorf("UnmarshalText(%q) = %v, %v", s, a, err)
		}
		if b, err := a.MarshalText(); err != nil || string(b) != s {
			t.Errorf("MarshalText() = %q, %v", b, err)
		}
	}
	a := UntaggedDelete
	if err := a.UnmarshalText([]byte("purge")); !errors.Is(err, ErrInvalidRetention) || a != UntaggedDelete {
		t.Errorf("UnmarshalText(purge) = %v, %v", a, err)
	}
	if _, err := UntaggedAction(5).MarshalText(); !errors.Is(err, ErrInvalidRetention) {
		t.Errorf("UntaggedAction(5).MarshalText() error = %v", err)
	}
}

// TestRetentionPolicyFor ensures each repository is governed by the first
// policy that matches it, and others by none.
func TestRetentionPolicyFor(t *testing.T) {
	t.Parallel()
	r := Retention{Policies: []RetentionPolicy{
		{Repositories: Globs{MustGlob("ci/special")}, Keep: []KeepRule{{MostRecent: 1}}},
		{Name: "ci", Repositories: Globs{MustGlob("ci/**")}, Keep: []KeepRule{{MostRecent: 10}}},
	}}
	tests := []struct {
		name, repo, want string
		ok               bool
	}{
		{"the first matching policy governs", "ci/special", "retention.policies[0]", true},
		{"a later policy governs what the first does not match", "ci/app/x", "ci", true},
		{"a repository no policy matches is left alone", "prod/app", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, ok := r.PolicyFor(tc.repo)
			if ok != tc.ok || p.Name != tc.want {
				t.Errorf("PolicyFor(%q) = %q, %v; want %q, %v", tc.repo, p.Name, ok, tc.want, tc.ok)
			}
		})
	}
}

// TestRetentionPlanRepositories ensures a run plans only the repositories a
// policy governs, each under its own policy, and sums the totals that
// max_deletions is checked against.
func TestRetentionPlanRepositories(t *testing.T) {
	t.Parallel()
	r := Retention{MaxDeletions: 2, Policies: []RetentionPolicy{
		{Repositories: Globs{MustGlob("ci/**")}, Keep: []KeepRule{{MostRecent: 1}}},
		{Repositories: Globs{MustGlob("dev/**")}, Keep: []KeepRule{keepTags("keep-*")}},
	}}
	old := []TagState{tagAt("a", "a", 3*day, Mutable), tagAt("b", "b", 2*day, Mutable)}
	plans, total := r.Plan(now, []RepoState{
		{Repository: "prod/app", Tags: old},
		{Repository: "dev/x", Tags: old},
		{Repository: "ci/app", Tags: old},
	})
	var repos []string
	for _, p := range plans {
		repos = append(repos, p.Repository+" under "+p.Policy)
	}
	if want := []string{"ci/app under retention.policies[0]", "dev/x under retention.policies[1]"}; !slices.Equal(repos, want) {
		t.Fatalf("planned %v, want %v", repos, want)
	}
	if total.TagsDeleted != 3 || total.TagsKept != 1 || total.ManifestsDeleted != 3 || !total.Exceeds(r.MaxDeletions) {
		t.Errorf("total = %+v; want 3 tags and 3 manifests deleted, over max_deletions 2", total)
	}
}

// TestRetentionValidate ensures configurations that cannot be applied safely
// are reported, every problem at once.
func TestRetentionValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		r         Retention
		wantParts []string
	}{
		{"the issue's configuration is valid", Retention{Schedule: day, MaxDeletions: 500, Policies: []RetentionPolicy{issuePolicy()}}, nil},
		{"a policy without keep rules is invalid", Retention{Policies: []RetentionPolicy{{}}},
			[]string{"retention.policies[0]", "no keep rules"}},
		{"every problem is reported", Retention{Schedule: -1, MaxDeletions: -1, Policies: []RetentionPolicy{{
			Name: "p", Keep: []KeepRule{{}, {MostRecent: -1}, {PushedWithin: -1}, {PulledWithin: -1}},
			Untagged: 7, UntaggedGrace: -1, Immutable: ImmutableRetention{ReleaseAfter: -1},
		}}}, []string{"schedule", "max_deletions", "p: ", "keep[0]: sets no criterion", "keep[1]: most_recent", "keep[2]: pushed_within",
			"keep[3]: pulled_within", "untagged must be", "grace", "release_after"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.r.Validate()
			if len(tc.wantParts) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidRetention) {
				t.Fatalf("Validate() = %v, want ErrInvalidRetention", err)
			}
			for _, p := range tc.wantParts {
				if !strings.Contains(err.Error(), p) {
					t.Errorf("error %q does not mention %q", err, p)
				}
			}
		})
	}
}

// TestRetentionStrings ensures rules print as the configuration spells them.
func TestRetentionStrings(t *testing.T) {
	t.Parallel()
	tests := []struct{ got, want string }{
		{issuePolicy().Keep[0].String(), "tags: v*"},
		{KeepRule{Tags: Globs{MustGlob("v*")}, MostRecent: 3, PushedWithin: 90 * time.Minute, PulledWithin: 45 * time.Second}.String(),
			"tags: v* and most_recent: 3 and pushed_within: 1h30m and pulled_within: 45s"},
		{KeepRule{}.String(), "every tag"},
		{ImmutableRetention{}.String(), "keep"},
		{ImmutableRetention{ReleaseAfter: 2160 * time.Hour}.String(), "release_after: 2160h"},
		{fmtDuration(time.Hour + 30*time.Second), "1h0m30s"},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

// TestReferrerTagSubject ensures only well-formed referrer tags name a
// subject.
func TestReferrerTagSubject(t *testing.T) {
	t.Parallel()
	hex := dg("x").Encoded()
	tests := []struct {
		tag  string
		want digest.Digest
	}{
		{"sha256-" + hex, dg("x")},
		{"sha256-" + hex + ".sig", dg("x")},
		{"sha256-" + hex + ".att", dg("x")},
		{"sha256-" + hex + "x", ""},
		{"sha256-" + hex[:63], ""},
		{"sha256-" + strings.ToUpper(hex), ""},
		{"sha1-" + hex, ""},
		{"v1", ""},
	}
	for _, tc := range tests {
		got, ok := referrerTagSubject(tc.tag)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("referrerTagSubject(%q) = %q, %v; want %q", tc.tag, got, ok, tc.want)
		}
	}
}
