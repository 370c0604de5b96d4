package policy

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrInvalidRetention is returned, wrapped, for a retention configuration
// that cannot be applied safely as written.
var ErrInvalidRetention = errors.New("invalid retention policy")

// DefaultUntaggedGrace is the grace period Plan uses when a policy leaves
// UntaggedGrace at zero. A manifest pushed by digest a moment ago may be the
// child of an index that is not tagged yet, so there is no way to ask for
// no grace at all.
const DefaultUntaggedGrace = 24 * time.Hour

// UntaggedAction says what retention does with a manifest no tag points to.
type UntaggedAction uint8

const (
	// UntaggedKeep keeps untagged manifests. It is the zero value.
	UntaggedKeep UntaggedAction = iota
	// UntaggedDelete deletes untagged manifests after the grace period.
	UntaggedDelete
)

// ParseUntagged parses "keep" or "delete".
func ParseUntagged(s string) (UntaggedAction, error) {
	switch s {
	case "keep":
		return UntaggedKeep, nil
	case "delete":
		return UntaggedDelete, nil
	}
	return UntaggedKeep, fmt.Errorf("%w: untagged %q: want keep or delete", ErrInvalidRetention, s)
}

// String returns "keep", "delete", or "UntaggedAction(N)" for other values.
func (a UntaggedAction) String() string {
	switch a {
	case UntaggedKeep:
		return "keep"
	case UntaggedDelete:
		return "delete"
	}
	return fmt.Sprintf("UntaggedAction(%d)", uint8(a))
}

// MarshalText returns the configuration spelling of a.
func (a UntaggedAction) MarshalText() ([]byte, error) {
	if a != UntaggedKeep && a != UntaggedDelete {
		return nil, fmt.Errorf("%w: %s", ErrInvalidRetention, a)
	}
	return []byte(a.String()), nil
}

// UnmarshalText parses text with ParseUntagged. On error a is unchanged.
func (a *UntaggedAction) UnmarshalText(text []byte) error {
	v, err := ParseUntagged(string(text))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// KeepRule retains the tags that meet all of its criteria. Unset criteria
// (empty Tags, zero numbers) do not restrict, so a rule that sets only
// MostRecent keeps the most recent tags of all, and one that sets Tags and
// MostRecent keeps the most recent tags among those matching Tags.
type KeepRule struct {
	// Name identifies the rule in plans, for example
	// "retention.policies[0].keep[1]". Plan names unnamed rules by position.
	Name string
	// Tags retains tags matching any glob ("tags" in the configuration).
	Tags Globs
	// MostRecent retains the N most recently pushed tags, ordered by the
	// ledger's first push time, newest first, ties by tag name. Referrer
	// tags (sha256-<hex>, sha256-<hex>.sig and the like) are not counted,
	// so signatures cannot crowd images out ("most_recent").
	MostRecent int
	// PushedWithin retains tags first pushed no longer ago than this
	// ("pushed_within").
	PushedWithin time.Duration
	// PulledWithin retains tags whose digest was pulled no longer ago than
	// this ("pulled_within"). A rule that sets nothing else also keeps
	// untagged manifests pulled by digest within the period.
	PulledWithin time.Duration
}

// String describes the rule's criteria as the configuration spells them.
func (k KeepRule) String() string {
	var parts []string
	if len(k.Tags) > 0 {
		parts = append(parts, "tags: "+k.Tags.String())
	}
	if k.MostRecent > 0 {
		parts = append(parts, fmt.Sprintf("most_recent: %d", k.MostRecent))
	}
	if k.PushedWithin > 0 {
		parts = append(parts, "pushed_within: "+fmtDuration(k.PushedWithin))
	}
	if k.PulledWithin > 0 {
		parts = append(parts, "pulled_within: "+fmtDuration(k.PulledWithin))
	}
	if len(parts) == 0 {
		return "every tag"
	}
	return strings.Join(parts, " and ")
}

// ImmutableRetention says what retention does with immutable tags.
type ImmutableRetention struct {
	// ReleaseAfter, when positive, lets retention release immutable tags
	// first pushed longer ago than this if no keep rule retains them
	// ("immutable: {release_after: 2160h}"). A released tag is deleted
	// upstream but stays bound in the ledger as a tombstone, so it can be
	// pushed again only with its original digest. Zero keeps every
	// immutable tag ("immutable: keep"), the default.
	ReleaseAfter time.Duration
}

// String returns "keep" or "release_after: D".
func (ir ImmutableRetention) String() string {
	if ir.ReleaseAfter <= 0 {
		return "keep"
	}
	return "release_after: " + fmtDuration(ir.ReleaseAfter)
}

// RetentionPolicy is one entry of retention.policies.
type RetentionPolicy struct {
	// Name identifies the policy in plans, for example
	// "retention.policies[0]".
	Name string
	// Repositories selects the repositories the policy governs.
	Repositories Globs
	// Keep lists the keep rules; a tag survives if any retains it. A policy
	// with no keep rules is invalid, and Plan keeps every tag under it.
	Keep []KeepRule
	// Untagged says what to do with manifests no tag points to.
	Untagged UntaggedAction
	// UntaggedGrace is how long an untagged manifest is kept after it was
	// first seen. Zero means DefaultUntaggedGrace.
	UntaggedGrace time.Duration
	// Immutable says whether immutable tags are ever released.
	Immutable ImmutableRetention
}

// Validate returns every problem of the policy at once.
func (p RetentionPolicy) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s", ErrInvalidRetention, fmt.Sprintf(format, args...)))
	}
	if len(p.Keep) == 0 {
		bad("no keep rules; a policy must say what it keeps (to keep every tag: keep: [{tags: [\"*\"]}])")
	}
	for i, k := range p.Keep {
		name := ruleName(k.Name, "keep", i)
		switch {
		case k.MostRecent < 0:
			bad("%s: most_recent is negative", name)
		case k.PushedWithin < 0:
			bad("%s: pushed_within is negative", name)
		case k.PulledWithin < 0:
			bad("%s: pulled_within is negative", name)
		case len(k.Tags) == 0 && k.MostRecent == 0 && k.PushedWithin == 0 && k.PulledWithin == 0:
			bad("%s: sets no criterion (tags, most_recent, pushed_within or pulled_within)", name)
		}
	}
	if p.Untagged != UntaggedKeep && p.Untagged != UntaggedDelete {
		bad("untagged must be keep or delete")
	}
	if p.UntaggedGrace < 0 {
		bad("the untagged grace period is negative")
	}
	if p.Immutable.ReleaseAfter < 0 {
		bad("immutable release_after is negative")
	}
	return errors.Join(errs...)
}

// Retention is the retention configuration.
type Retention struct {
	// Schedule is how often serve applies retention; zero means only on
	// demand.
	Schedule time.Duration
	// MaxDeletions refuses a run whose plan deletes more than this many
	// tags and manifests together; zero or less means no limit.
	MaxDeletions int
	// Policies are tried in order; the first whose repositories match
	// governs a repository. A repository no policy matches is left alone.
	Policies []RetentionPolicy
}

// PolicyFor returns the policy that governs repo: the first whose
// repositories match. An unnamed policy is named by its position.
func (r Retention) PolicyFor(repo string) (RetentionPolicy, bool) {
	for i, p := range r.Policies {
		if p.Repositories.Match(repo) {
			p.Name = ruleName(p.Name, "retention.policies", i)
			return p, true
		}
	}
	return RetentionPolicy{}, false
}

// Validate returns every problem of the configuration at once.
func (r Retention) Validate() error {
	var errs []error
	if r.Schedule < 0 {
		errs = append(errs, fmt.Errorf("%w: schedule is negative", ErrInvalidRetention))
	}
	if r.MaxDeletions < 0 {
		errs = append(errs, fmt.Errorf("%w: max_deletions is negative", ErrInvalidRetention))
	}
	for i, p := range r.Policies {
		if err := p.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ruleName(p.Name, "retention.policies", i), err))
		}
	}
	return errors.Join(errs...)
}

// fmtDuration prints d like time.Duration.String without the trailing zero
// units: "720h", "1h30m", "45s".
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
