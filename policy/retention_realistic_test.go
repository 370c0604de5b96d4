package policy

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// issuePolicy is the ci/** policy of the retention issue.
func issuePolicy() RetentionPolicy {
	return RetentionPolicy{
		Name:         "retention.policies[0]",
		Repositories: Globs{MustGlob("ci/**")},
		Keep: []KeepRule{
			keepTags("v*"),
			{MostRecent: 10},
			{PushedWithin: 720 * time.Hour},
			{PulledWithin: 168 * time.Hour},
		},
		Untagged: UntaggedDelete,
	}
}

func build(k int) string { return fmt.Sprintf("build-%02d", k) }

// realisticRepo is a CI repository: five immutable multi-arch releases, one
// build every three days for two months (the oldest four multi-arch), a
// moving latest, a candidate tag sharing a build's digest, a retried build
// pushed under two tags, cosign signatures, SBOM referrers, untagged
// leftovers, a manifest pinned by digest and a tombstone from a run that
// was interrupted.
func realisticRepo() RepoState {
	in := RepoState{Repository: "ci/team/app"}
	index := func(name string, size int64, firstSeen time.Time) {
		in.Manifests = append(in.Manifests,
			ManifestState{Digest: dg(name), Size: size, FirstSeen: firstSeen, Children: []digest.Digest{dg(name + "-amd64"), dg(name + "-arm64")}},
			ManifestState{Digest: dg(name + "-amd64"), Size: 500, FirstSeen: firstSeen},
			ManifestState{Digest: dg(name + "-arm64"), Size: 500, FirstSeen: firstSeen})
	}
	for i, v := range []string{"v1.0.0", "v1.1.0", "v1.2.0", "v1.3.0", "v1.4.0"} {
		pushed := ago(time.Duration(200-40*i) * day)
		in.Tags = append(in.Tags, TagState{Tag: v, Digest: dg(v), PushedAt: pushed, Mode: Immutable})
		index(v, 1000, pushed)
	}
	for k := 1; k <= 20; k++ {
		pushed := ago(time.Duration((20-k)*3+1) * day)
		in.Tags = append(in.Tags, TagState{Tag: build(k), Digest: dg(build(k)), PushedAt: pushed, Mode: Mutable})
		if k <= 4 {
			index(build(k), 1000, pushed)
		} else {
			in.Manifests = append(in.Manifests, ManifestState{Digest: dg(build(k)), Size: 1000, FirstSeen: pushed})
		}
	}
	setPulled := func(tag string, when time.Time) {
		for i := range in.Tags {
			if in.Tags[i].Tag == tag {
				in.Tags[i].LastPulled = when
			}
		}
	}
	setPulled(build(3), ago(2*day))
	setPulled(build(5), ago(10*day))
	in.Tags = append(in.Tags,
		TagState{Tag: "latest", Digest: dg(build(20)), PushedAt: ago(day), LastPulled: ago(time.Hour), Mode: Mutable},
		TagState{Tag: "candidate", Digest: dg(build(12)), PushedAt: ago(50 * day), Mode: Mutable},
		TagState{Tag: build(1) + "-retry", Digest: dg(build(1)), PushedAt: ago(58 * day), Mode: Mutable},
		TagState{Tag: sigTag("v1.0.0"), Digest: dg("sig-v1.0.0"), PushedAt: ago(200 * day), Mode: Mutable},
		TagState{Tag: sigTag(build(15)), Digest: dg("sig-" + build(15)), PushedAt: ago(16 * day), Mode: Mutable},
		TagState{Tag: sigTag(build(1)), Digest: dg("sig-" + build(1)), PushedAt: ago(58 * day), Mode: Mutable},
		TagState{Tag: "v0.9.0", Digest: dg("v0.9.0"), PushedAt: ago(300 * day), Mode: Immutable, Deleted: true},
	)
	in.Manifests = append(in.Manifests,
		ManifestState{Digest: dg("sig-v1.0.0"), Size: 300, FirstSeen: ago(200 * day)},
		ManifestState{Digest: dg("sig-" + build(15)), Size: 300, FirstSeen: ago(16 * day)},
		ManifestState{Digest: dg("sig-" + build(1))}, // size unknown
		ManifestState{Digest: dg("sbom-v1.1.0"), Subject: dg("v1.1.0"), Size: 200, FirstSeen: ago(160 * day)},
		ManifestState{Digest: dg("sbom-" + build(2)), Subject: dg(build(2)), Size: 200, FirstSeen: ago(55 * day)},
		ManifestState{Digest: dg("dangling-old"), Size: 700, FirstSeen: ago(10 * day)},
		ManifestState{Digest: dg("dangling-new"), Size: 700, FirstSeen: ago(time.Hour)},
		ManifestState{Digest: dg("hotfix"), Size: 900, FirstSeen: ago(100 * day), LastPulled: ago(3 * day)},
		ManifestState{Digest: dg("v0.9.0"), Size: 800, FirstSeen: ago(300 * day)},
	)
	return in
}

// TestPlanRealisticRepository ensures the issue's policy, applied to a
// realistic CI repository, gives exactly the expected plan: releases,
// recent and in-use builds and their signatures stay, everything else goes
// with its children and referrers.
func TestPlanRealisticRepository(t *testing.T) {
	t.Parallel()
	plan := Plan(now, issuePolicy(), realisticRepo())
	if plan.Repository != "ci/team/app" || plan.Policy != "retention.policies[0]" {
		t.Errorf("plan is for %q under %q", plan.Repository, plan.Policy)
	}
	var keptBuilds, deletedBuilds []string
	for k := 1; k <= 20; k++ {
		if k >= 11 || k == 3 {
			keptBuilds = append(keptBuilds, build(k))
		} else {
			deletedBuilds = append(deletedBuilds, build(k))
		}
	}
	children := func(names ...string) []string {
		var out []string
		for _, n := range names {
			out = append(out, n+"-amd64", n+"-arm64")
		}
		return out
	}
	want := planWant{
		keptTags: append([]string{"v1.0.0", "v1.1.0", "v1.2.0", "v1.3.0", "v1.4.0", "latest",
			sigTag("v1.0.0"), sigTag(build(15))}, keptBuilds...),
		deletedTags: append([]string{"candidate", build(1) + "-retry", sigTag(build(1))}, deletedBuilds...),
		keptManifests: append(children("v1.0.0", "v1.1.0", "v1.2.0", "v1.3.0", "v1.4.0", build(3)),
			"sbom-v1.1.0", "dangling-new", "hotfix"),
		deletedManifests: append(append(children(build(1), build(2), build(4)), deletedBuilds...),
			"sig-"+build(1), "sbom-"+build(2), "dangling-old", "v0.9.0"),
		reasons: map[string]string{
			"v1.0.0":                  "kept by retention.policies[0].keep[0] (tags: v*)",
			build(20):                 "kept by retention.policies[0].keep[1] (most_recent: 10, it is number 1 by push time)",
			"latest":                  "number 2 by push time",
			build(11):                 "kept by retention.policies[0].keep[2] (pushed_within: 720h, pushed 672h ago)",
			build(3):                  "kept by retention.policies[0].keep[3] (pulled_within: 168h, pulled 48h ago)",
			build(5):                  ReasonNoKeepRule,
			"candidate":               ReasonNoKeepRule,
			sigTag(build(15)):         "kept by retention.policies[0].keep[2] (pushed_within",
			sigTag("v1.0.0"):          "referrer tag of " + string(dg("v1.0.0")) + ", which is kept",
			sigTag(build(1)):          "its subject " + string(dg(build(1))) + " is deleted",
			"@" + build(1):            "no tag is left on it: the plan deletes " + build(1) + ", " + build(1) + "-retry",
			"@" + build(1) + "-amd64": "child of " + string(dg(build(1))) + ", which is deleted",
			"@sbom-" + build(2):       "referrer of " + string(dg(build(2))) + ", which is deleted",
			"@sbom-v1.1.0":            "referrer of " + string(dg("v1.1.0")) + ", which is kept",
			"@dangling-old":           "untagged for 240h, past the 24h grace period",
			"@dangling-new":           "within the 24h grace period",
			"@hotfix":                 "pulled by digest 72h ago",
			"@v0.9.0":                 "tombstones: v0.9.0",
			"@" + build(3) + "-arm64": "child of " + string(dg(build(3))) + ", which is kept",
			"@v1.4.0-amd64":           "child of " + string(dg("v1.4.0")),
			"@sig-" + build(1):        "no tag is left on it",
		},
	}
	checkPlan(t, plan, want)

	// Sizes: 7 deleted indexes/images of 1000 bytes from builds 05..10 and
	// 01, 02, 04, six children of 500, the two referrers (one unknown), the
	// old leftover and the tombstoned release.
	wantTotals := RetentionTotals{
		TagsKept: len(want.keptTags), TagsDeleted: len(want.deletedTags),
		ManifestsKept: len(want.keptManifests), ManifestsDeleted: len(want.deletedManifests),
		BytesFreed: 9*1000 + 6*500 + 200 + 700 + 800, UnknownSizes: 1,
	}
	if plan.Totals != wantTotals {
		t.Errorf("totals = %+v, want %+v", plan.Totals, wantTotals)
	}
	checkDeleteOrder(t, plan, realisticRepo())
}

// checkDeleteOrder fails when a deleted index comes after one of its
// deleted children, or a deleted subject before one of its deleted
// referrers.
func checkDeleteOrder(t *testing.T, plan RetentionPlan, in RepoState) {
	t.Helper()
	pos := map[digest.Digest]int{}
	for i, d := range plan.DeleteOrder {
		pos[d] = i
	}
	for _, m := range in.Manifests {
		i, ok := pos[m.Digest]
		if !ok {
			continue
		}
		for _, c := range m.Children {
			if j, ok := pos[c]; ok && j < i {
				t.Errorf("child %s is deleted before its index %s", c, m.Digest)
			}
		}
		if j, ok := pos[m.Subject]; ok && j < i {
			t.Errorf("subject %s is deleted before its referrer %s", m.Subject, m.Digest)
		}
	}
	if !slices.Equal(slices.Sorted(slices.Values(plan.DeleteOrder)), func() []digest.Digest {
		var out []digest.Digest
		for _, m := range plan.Manifests {
			if !m.Kept {
				out = append(out, m.Digest)
			}
		}
		return out
	}()) {
		t.Error("DeleteOrder does not hold exactly the deleted manifests")
	}
}
