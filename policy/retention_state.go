package policy

import (
	"time"

	"github.com/opencontainers/go-digest"
)

// RepoState is what Plan needs to know about one repository.
type RepoState struct {
	// Repository is the repository name.
	Repository string
	// Tags are the ledger's bindings in the repository, tombstones included.
	Tags []TagState
	// Manifests are the manifests known in the repository: those tags point
	// to, their children and referrers, and untagged ones taglock has seen.
	Manifests []ManifestState
}

// TagState is one tag binding as the ledger and pull tracking know it.
type TagState struct {
	// Tag is the tag name.
	Tag string
	// Digest is the digest the tag is bound to.
	Digest digest.Digest
	// PushedAt is the first push of the binding; a re-push does not reset
	// it. A zero PushedAt means unknown, and Plan keeps the tag.
	PushedAt time.Time
	// Mode is the tag's effective mode (see Effective).
	Mode Mode
	// LastPulled is the last pull of the tag's digest, zero if never.
	LastPulled time.Time
	// Deleted marks a tombstone: the tag was deleted or released and is no
	// longer in the upstream, but stays bound in the ledger.
	Deleted bool
}

// ManifestState is one manifest known in the repository.
type ManifestState struct {
	// Digest identifies the manifest.
	Digest digest.Digest
	// Size is the manifest's size plus the blobs it alone accounts for, as
	// the upstream reports them; zero when unknown.
	Size int64
	// Children are the manifests an index lists.
	Children []digest.Digest
	// Subject is the manifest a referrer (signature, SBOM, attestation)
	// refers to, "" for an ordinary manifest.
	Subject digest.Digest
	// Tagged reports that the upstream lists at least one tag for this
	// digest. A manifest is tagged when Tagged is set or a live TagState
	// points to it. When Tagged is set but no live TagState points to it,
	// its tags are unknown to the plan and it is never deleted.
	Tagged bool
	// FirstSeen is when taglock first saw the manifest; the untagged grace
	// period counts from it. A zero FirstSeen keeps an untagged manifest.
	FirstSeen time.Time
	// LastPulled is the last pull of the digest, zero if never.
	LastPulled time.Time
}

// TagDecision is the plan for one live tag.
type TagDecision struct {
	// Tag is the tag name.
	Tag string
	// Digest is the digest the tag is bound to.
	Digest digest.Digest
	// Kept is false when the plan deletes the tag (DELETE manifests/<tag>).
	Kept bool
	// Released marks a deleted immutable tag that release_after let go. It
	// stays bound in the ledger as a tombstone.
	Released bool
	// Reason says which rule kept the tag, or why none did.
	Reason string
	// KeptBy names everything that retains the tag, in order: keep rule
	// names, "immutable", "unknown push time" or "subject".
	KeptBy []string
}

// ManifestDecision is the plan for one manifest that no kept tag points to:
// one that was untagged before the plan, or whose tags the plan deletes.
type ManifestDecision struct {
	// Digest identifies the manifest.
	Digest digest.Digest
	// Size is the known size, zero when unknown.
	Size int64
	// Kept is false when the plan deletes the digest.
	Kept bool
	// Reason says why the manifest is kept or deleted.
	Reason string
	// DeletedTags are the tags this plan deletes that pointed to it.
	DeletedTags []string
}

// RetentionTotals sums up one or more plans.
type RetentionTotals struct {
	// TagsKept and TagsDeleted count live tags by decision.
	TagsKept, TagsDeleted int
	// TagsReleased counts the deleted tags that were immutable.
	TagsReleased int
	// ManifestsKept and ManifestsDeleted count the manifests no kept tag
	// points to, by decision.
	ManifestsKept, ManifestsDeleted int
	// BytesFreed sums the known sizes of the deleted manifests.
	BytesFreed int64
	// UnknownSizes counts deleted manifests whose size is unknown, so
	// BytesFreed is a lower bound when it is not zero.
	UnknownSizes int
}

// Deletions is the number of delete requests the totals stand for.
func (t RetentionTotals) Deletions() int { return t.TagsDeleted + t.ManifestsDeleted }

// Add returns the sum of t and o.
func (t RetentionTotals) Add(o RetentionTotals) RetentionTotals {
	return RetentionTotals{
		TagsKept: t.TagsKept + o.TagsKept, TagsDeleted: t.TagsDeleted + o.TagsDeleted,
		TagsReleased:  t.TagsReleased + o.TagsReleased,
		ManifestsKept: t.ManifestsKept + o.ManifestsKept, ManifestsDeleted: t.ManifestsDeleted + o.ManifestsDeleted,
		BytesFreed: t.BytesFreed + o.BytesFreed, UnknownSizes: t.UnknownSizes + o.UnknownSizes,
	}
}

// Exceeds reports whether the totals delete more than max (tags and
// manifests together). A max of zero or less is no limit.
func (t RetentionTotals) Exceeds(max int) bool { return max > 0 && t.Deletions() > max }

// RetentionPlan is what retention would do to one repository.
type RetentionPlan struct {
	// Repository is the planned repository.
	Repository string
	// Policy is the name of the governing policy.
	Policy string
	// Tags has one decision per live tag, sorted by tag.
	Tags []TagDecision
	// Manifests has one decision per manifest no kept tag points to,
	// sorted by digest.
	Manifests []ManifestDecision
	// DeleteOrder lists the digests to delete, after the tags, in a safe
	// order: a referrer before its subject, an index before its children
	// (as registries that check references require), otherwise by digest.
	DeleteOrder []digest.Digest
	// Totals sums the decisions.
	Totals RetentionTotals
}

// Exceeds reports whether the plan deletes more than max; see
// RetentionTotals.Exceeds.
func (p RetentionPlan) Exceeds(max int) bool { return p.Totals.Exceeds(max) }

// DeleteTags returns the tags to delete, sorted.
func (p RetentionPlan) DeleteTags() []string {
	var out []string
	for _, t := range p.Tags {
		if !t.Kept {
			out = append(out, t.Tag)
		}
	}
	return out
}
