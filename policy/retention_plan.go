package policy

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// Reason texts that callers and tests may match on.
const (
	// ReasonNoKeepRule is the reason a tag is deleted when nothing keeps it.
	ReasonNoKeepRule = "no keep rule retains it"
)

// Plan decides, at time now, what policy p deletes from the repository in.
// It is pure and deterministic.
//
// Tags: a live tag is kept when any keep rule retains it, when it is
// immutable (unless release_after has passed), or when its push time is
// unknown. A referrer tag (sha256-<hex>, optionally with a suffix such as
// .sig) whose subject is in the repository is also kept while its subject
// is kept, and deleted with it otherwise. Every other tag is deleted.
//
// Manifests: the digests of kept tags are kept, and so is everything they
// reach: the children of a kept index and the referrers of a kept subject.
// Kept too are manifests with tags the plan does not know, untagged
// manifests pulled within a pulled_within rule that sets nothing else, and
// untagged manifests that untagged: keep, the grace period or an unknown
// first-seen time protect. Every other known manifest is deleted: it has no
// tag left after the plan, or only tombstones, or it is the child or
// referrer of a deleted manifest. A digest is therefore never deleted while
// any remaining tag points to it.
func Plan(now time.Time, p RetentionPolicy, in RepoState) RetentionPlan {
	pl := planner{now: now, p: p, in: in}
	return pl.run()
}

// Plan plans every repository of repos that a policy governs, at time now,
// and returns the plans sorted by repository with their summed totals.
// Repositories no policy matches are left out: retention leaves them alone.
func (r Retention) Plan(now time.Time, repos []RepoState) ([]RetentionPlan, RetentionTotals) {
	var plans []RetentionPlan
	var total RetentionTotals
	for _, in := range repos {
		p, ok := r.PolicyFor(in.Repository)
		if !ok {
			continue
		}
		plan := Plan(now, p, in)
		plans = append(plans, plan)
		total = total.Add(plan.Totals)
	}
	slices.SortStableFunc(plans, func(a, b RetentionPlan) int { return strings.Compare(a.Repository, b.Repository) })
	return plans, total
}

type planner struct {
	now time.Time
	p   RetentionPolicy
	in  RepoState

	man       map[digest.Digest]*ManifestState
	known     []digest.Digest // sorted
	liveTags  map[digest.Digest][]*TagState
	tombs     map[digest.Digest][]string
	parents   map[digest.Digest][]digest.Digest // child -> indexes listing it, sorted
	referrers map[digest.Digest][]digest.Digest // subject -> referrers, sorted
}

type tagEval struct {
	TagDecision
	subject digest.Digest // set for a referrer tag whose subject is known
	pending bool          // kept or deleted with its subject
}

func (pl *planner) run() RetentionPlan {
	pl.index()
	evals := pl.decideTags()

	// Roots: digests that must stay, each with the reason it stays.
	roots := map[digest.Digest]string{}
	for _, e := range evals {
		if _, ok := roots[e.Digest]; e.Kept && !ok && e.Digest != "" {
			roots[e.Digest] = "tag " + e.Tag + " is kept"
		}
	}
	untagged := map[digest.Digest]string{} // independent untagged manifests to delete, with reasons
	for _, d := range pl.known {
		if reason, keep, ok := pl.untaggedRoot(d); ok {
			if keep {
				roots[d] = reason
			} else {
				untagged[d] = reason
			}
		}
	}

	// Referrer tags follow their subject; iterate until nothing changes.
	kept := pl.closure(roots)
	for changed := true; changed; {
		changed = false
		for i := range evals {
			e := &evals[i]
			if !e.pending {
				continue
			}
			if _, ok := kept[e.subject]; ok {
				e.pending, e.Kept, e.Released, changed = false, true, false, true
				e.KeptBy = []string{"subject"}
				e.Reason = fmt.Sprintf("referrer tag of %s, which is kept", e.subject)
				if _, ok := roots[e.Digest]; !ok {
					roots[e.Digest] = "tag " + e.Tag + " is kept"
				}
			}
		}
		if changed {
			kept = pl.closure(roots)
		}
	}
	for i := range evals {
		if e := &evals[i]; e.pending {
			e.pending = false
			e.Reason = fmt.Sprintf("%s; its subject %s is deleted", e.Reason, e.subject)
		}
	}

	plan := RetentionPlan{Repository: pl.in.Repository, Policy: pl.p.Name}
	keptTag := map[digest.Digest]bool{}
	deletedTags := map[digest.Digest][]string{}
	for _, e := range evals {
		plan.Tags = append(plan.Tags, e.TagDecision)
		if e.Kept {
			keptTag[e.Digest] = true
			plan.Totals.TagsKept++
			continue
		}
		deletedTags[e.Digest] = append(deletedTags[e.Digest], e.Tag)
		plan.Totals.TagsDeleted++
		if e.Released {
			plan.Totals.TagsReleased++
		}
	}

	var deleted []digest.Digest
	for _, d := range pl.known {
		if keptTag[d] {
			continue
		}
		md := ManifestDecision{Digest: d, DeletedTags: deletedTags[d]}
		if m := pl.man[d]; m != nil && m.Size > 0 {
			md.Size = m.Size
		}
		if reason, ok := kept[d]; ok {
			md.Kept, md.Reason = true, reason
			plan.Totals.ManifestsKept++
		} else {
			md.Reason = pl.deleteReason(d, deletedTags[d], untagged[d], kept)
			deleted = append(deleted, d)
			plan.Totals.ManifestsDeleted++
			if md.Size > 0 {
				plan.Totals.BytesFreed += md.Size
			} else {
				plan.Totals.UnknownSizes++
			}
		}
		plan.Manifests = append(plan.Manifests, md)
	}
	plan.DeleteOrder = pl.deleteOrder(deleted)
	return plan
}

// index builds the lookup tables. Duplicate manifest entries are merged so
// that any of them marking the digest tagged, pulled or linked counts.
func (pl *planner) index() {
	pl.man = map[digest.Digest]*ManifestState{}
	pl.liveTags = map[digest.Digest][]*TagState{}
	pl.tombs = map[digest.Digest][]string{}
	pl.parents = map[digest.Digest][]digest.Digest{}
	pl.referrers = map[digest.Digest][]digest.Digest{}
	known := map[digest.Digest]bool{}
	for i := range pl.in.Manifests {
		m := pl.in.Manifests[i]
		if m.Digest == "" {
			continue
		}
		known[m.Digest] = true
		if prev, ok := pl.man[m.Digest]; ok {
			m = mergeManifest(*prev, m)
		}
		// A sorted copy: walks are deterministic and the input is untouched.
		m.Children = slices.Compact(slices.Sorted(slices.Values(m.Children)))
		pl.man[m.Digest] = &m
	}
	for _, m := range pl.man {
		for _, c := range m.Children {
			known[c] = true
			pl.parents[c] = append(pl.parents[c], m.Digest)
		}
		if m.Subject != "" {
			pl.referrers[m.Subject] = append(pl.referrers[m.Subject], m.Digest)
		}
	}
	for i := range pl.in.Tags {
		t := &pl.in.Tags[i]
		if t.Digest == "" {
			continue
		}
		if t.Deleted {
			pl.tombs[t.Digest] = append(pl.tombs[t.Digest], t.Tag)
			continue
		}
		known[t.Digest] = true
		pl.liveTags[t.Digest] = append(pl.liveTags[t.Digest], t)
	}
	for d := range known {
		pl.known = append(pl.known, d)
	}
	slices.Sort(pl.known)
	for _, m := range []map[digest.Digest][]digest.Digest{pl.parents, pl.referrers} {
		for k, v := range m {
			slices.Sort(v)
			m[k] = slices.Compact(v)
		}
	}
	for _, v := range pl.tombs {
		slices.Sort(v)
	}
}

func mergeManifest(a, b ManifestState) ManifestState {
	a.Size = max(a.Size, b.Size)
	a.Children = append(slices.Clone(a.Children), b.Children...)
	a.Subject = cmp.Or(a.Subject, b.Subject)
	a.Tagged = a.Tagged || b.Tagged
	if a.FirstSeen.IsZero() || (!b.FirstSeen.IsZero() && b.FirstSeen.Before(a.FirstSeen)) {
		a.FirstSeen = b.FirstSeen
	}
	if b.LastPulled.After(a.LastPulled) {
		a.LastPulled = b.LastPulled
	}
	return a
}

// lastPulled is the later of the tag's and its digest's last pull.
func (pl *planner) lastPulled(t *TagState) time.Time {
	lp := t.LastPulled
	if m := pl.man[t.Digest]; m != nil && m.LastPulled.After(lp) {
		lp = m.LastPulled
	}
	return lp
}

// untaggedRoot decides a manifest that was untagged before the plan and
// has no parent or subject in the repository. ok is false for any other
// manifest, whose fate follows its tags, parents or subject.
func (pl *planner) untaggedRoot(d digest.Digest) (reason string, keep, ok bool) {
	m := pl.man[d]
	if len(pl.liveTags[d]) > 0 {
		return "", false, false
	}
	if m != nil && m.Tagged {
		return "the upstream lists tags for it that the ledger does not know", true, true
	}
	if m == nil || len(pl.parents[d]) > 0 || (m.Subject != "" && pl.isKnown(m.Subject)) {
		return "", false, false
	}
	if rule, ago, ok := pl.pulledByDigest(m); ok {
		return fmt.Sprintf("kept by %s (pulled_within: %s): pulled by digest %s ago", rule.Name, fmtDuration(rule.PulledWithin), fmtDuration(ago)), true, true
	}
	if tombs := pl.tombs[d]; len(tombs) > 0 {
		return fmt.Sprintf("its tags were deleted earlier (tombstones: %s); finishing that deletion", strings.Join(tombs, ", ")), false, true
	}
	if pl.p.Untagged != UntaggedDelete {
		return "untagged, and the policy keeps untagged manifests (untagged: keep)", true, true
	}
	if m.FirstSeen.IsZero() {
		return "untagged, but when it was first seen is unknown, so its grace period cannot start", true, true
	}
	grace := cmp.Or(pl.p.UntaggedGrace, DefaultUntaggedGrace)
	age := pl.now.Sub(m.FirstSeen).Round(time.Second)
	if age < grace {
		return fmt.Sprintf("untagged for %s, within the %s grace period", fmtDuration(age), fmtDuration(grace)), true, true
	}
	return fmt.Sprintf("untagged for %s, past the %s grace period (untagged: delete)", fmtDuration(age), fmtDuration(grace)), false, true
}

// pulledByDigest reports the first keep rule that sets only pulled_within
// and retains m by its own last pull.
func (pl *planner) pulledByDigest(m *ManifestState) (KeepRule, time.Duration, bool) {
	if m.LastPulled.IsZero() {
		return KeepRule{}, 0, false
	}
	ago := pl.now.Sub(m.LastPulled).Round(time.Second)
	for i, k := range pl.p.Keep {
		if k.PulledWithin > 0 && len(k.Tags) == 0 && k.MostRecent == 0 && k.PushedWithin == 0 && ago <= k.PulledWithin {
			k.Name = pl.keepName(k, i)
			return k, ago, true
		}
	}
	return KeepRule{}, 0, false
}

func (pl *planner) isKnown(d digest.Digest) bool {
	_, ok := slices.BinarySearch(pl.known, d)
	return ok
}

// closure returns every digest reachable from roots through children and
// referrers, each with the reason it is kept. It walks in sorted order so
// the reasons are deterministic.
func (pl *planner) closure(roots map[digest.Digest]string) map[digest.Digest]string {
	kept := make(map[digest.Digest]string, len(roots))
	queue := make([]digest.Digest, 0, len(roots))
	for d := range roots {
		queue = append(queue, d)
	}
	slices.Sort(queue)
	for _, d := range queue {
		kept[d] = roots[d]
	}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		var next []link
		if m := pl.man[d]; m != nil {
			for _, c := range m.Children {
				next = append(next, link{c, fmt.Sprintf("child of %s, which is kept", d)})
			}
		}
		for _, r := range pl.referrers[d] {
			next = append(next, link{r, fmt.Sprintf("referrer of %s, which is kept", d)})
		}
		for _, n := range next {
			if _, ok := kept[n.d]; !ok {
				kept[n.d] = n.reason
				queue = append(queue, n.d)
			}
		}
	}
	return kept
}

// link is a digest reached while walking, with the reason it was reached.
type link struct {
	d      digest.Digest
	reason string
}

// deleteReason explains why d is deleted.
func (pl *planner) deleteReason(d digest.Digest, tags []string, untagged string, kept map[digest.Digest]string) string {
	switch {
	case len(tags) > 0:
		return fmt.Sprintf("no tag is left on it: the plan deletes %s", strings.Join(tags, ", "))
	case untagged != "":
		return untagged
	}
	if m := pl.man[d]; m != nil && m.Subject != "" && pl.isKnown(m.Subject) {
		if _, ok := kept[m.Subject]; !ok {
			return fmt.Sprintf("referrer of %s, which is deleted", m.Subject)
		}
	}
	for _, p := range pl.parents[d] {
		if _, ok := kept[p]; !ok {
			return fmt.Sprintf("child of %s, which is deleted", p)
		}
	}
	return "nothing that is kept points to it"
}

// deleteOrder sorts the deleted digests so that a referrer comes before its
// subject and an index before its children; ties, and any cycle in
// malformed input, fall back to digest order.
func (pl *planner) deleteOrder(deleted []digest.Digest) []digest.Digest {
	in := map[digest.Digest]bool{}
	for _, d := range deleted {
		in[d] = true
	}
	// after[d] lists the digests that must be deleted after d.
	after := map[digest.Digest][]digest.Digest{}
	indeg := map[digest.Digest]int{}
	edge := func(first, then digest.Digest) {
		if in[first] && in[then] && first != then {
			after[first] = append(after[first], then)
			indeg[then]++
		}
	}
	for _, d := range deleted {
		if m := pl.man[d]; m != nil {
			for _, c := range m.Children {
				edge(d, c)
			}
			if m.Subject != "" {
				edge(d, m.Subject)
			}
		}
	}
	out := make([]digest.Digest, 0, len(deleted))
	done := map[digest.Digest]bool{}
	for len(out) < len(deleted) {
		var ready []digest.Digest
		for _, d := range deleted {
			if !done[d] && indeg[d] == 0 {
				ready = append(ready, d)
			}
		}
		if len(ready) == 0 { // a cycle: only malformed input gets here
			for _, d := range deleted {
				if !done[d] {
					ready = append(ready, d)
				}
			}
		}
		for _, d := range ready {
			done[d] = true
			out = append(out, d)
			for _, n := range after[d] {
				indeg[n]--
			}
		}
	}
	return out
}
