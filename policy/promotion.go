package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
)

// ErrInvalidPromotion is returned, wrapped, for a promotion rule that
// cannot be enforced as written.
var ErrInvalidPromotion = errors.New("invalid promotion rule")

// Require says which source bindings let a digest be promoted.
type Require uint8

const (
	// SameTag requires the source repository's tag of the same name to be
	// bound to the incoming digest.
	SameTag Require = iota + 1
	// AnyTag requires some tag of the source repository to be bound to the
	// incoming digest.
	AnyTag
)

// ParseRequire parses "same-tag" or "any-tag".
func ParseRequire(s string) (Require, error) {
	switch s {
	case "same-tag":
		return SameTag, nil
	case "any-tag":
		return AnyTag, nil
	}
	return 0, fmt.Errorf("%w: require %q: want same-tag or any-tag", ErrInvalidPromotion, s)
}

// String returns "same-tag", "any-tag", or "Require(N)" for other values.
func (r Require) String() string {
	switch r {
	case SameTag:
		return "same-tag"
	case AnyTag:
		return "any-tag"
	}
	return fmt.Sprintf("Require(%d)", uint8(r))
}

// MarshalText returns the configuration spelling of r. It fails for a value
// that is not a Require.
func (r Require) MarshalText() ([]byte, error) {
	if r != SameTag && r != AnyTag {
		return nil, fmt.Errorf("%w: %s", ErrInvalidPromotion, r)
	}
	return []byte(r.String()), nil
}

// UnmarshalText parses text with ParseRequire. On error r is left unchanged.
func (r *Require) UnmarshalText(text []byte) error {
	v, err := ParseRequire(string(text))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// PromotionRule guards the repositories under Into: a tag written there
// must carry a digest already bound under the same path below From.
type PromotionRule struct {
	// Name identifies the rule in decisions, for example "promotion[0]".
	Name string
	// Into is the guarded repository prefix, such as "prod/".
	Into string
	// From is the source repository prefix, such as "staging/".
	From string
	// Require says which source binding admits a digest. The zero value is
	// no requirement at all, and DecidePromotion denies under it.
	Require Require
}

// Validate checks that the rule can be enforced: both prefixes are set and
// end in "/", neither contains the other, and Require is valid.
func (r PromotionRule) Validate() error {
	var errs []error
	for _, p := range []struct{ field, v string }{{"into", r.Into}, {"from", r.From}} {
		if p.v == "" || !strings.HasSuffix(p.v, "/") || strings.HasPrefix(p.v, "/") {
			errs = append(errs, fmt.Errorf("%w: %s %q: want a repository prefix ending in \"/\", such as \"prod/\"", ErrInvalidPromotion, p.field, p.v))
		}
	}
	if r.Into != "" && r.From != "" && (strings.HasPrefix(r.Into, r.From) || strings.HasPrefix(r.From, r.Into)) {
		errs = append(errs, fmt.Errorf("%w: into %q and from %q overlap, so the source would itself need promoting", ErrInvalidPromotion, r.Into, r.From))
	}
	if r.Require != SameTag && r.Require != AnyTag {
		errs = append(errs, fmt.Errorf("%w: require must be same-tag or any-tag", ErrInvalidPromotion))
	}
	return errors.Join(errs...)
}

// MatchPromotion returns the first rule that guards repo, and the source
// repository. A rule guards every repository under Into, whose source is
// From followed by the rest of repo, and the repository named by Into
// itself without its final slash ("prod" for "prod/"), whose source is From
// without its final slash: writing to the bare name must not bypass the
// guard on the namespace it names. ok is false when no rule guards repo.
func MatchPromotion(rules []PromotionRule, repo string) (rule PromotionRule, source string, ok bool) {
	for i, r := range rules {
		if r.Into == "" {
			continue
		}
		r.Name = ruleName(r.Name, "promotion", i)
		switch {
		case strings.HasPrefix(repo, r.Into):
			return r, r.From + strings.TrimPrefix(repo, r.Into), true
		case repo == strings.TrimSuffix(r.Into, "/"):
			return r, strings.TrimSuffix(r.From, "/"), true
		}
	}
	return PromotionRule{}, "", false
}

// PromotionDecision is the outcome of DecidePromotion.
type PromotionDecision struct {
	// Allowed reports whether the write may proceed.
	Allowed bool
	// Rule is the name of the rule that guarded the write.
	Rule string
	// Source is the source repository, such as "staging/team/app".
	Source string
	// StagingDigest is what the source binds for the written tag, "" if
	// nothing.
	StagingDigest digest.Digest
	// SourceTag is the source tag bound to the incoming digest that
	// admitted the write ("" when denied). Under any-tag it is the same tag
	// when that holds the digest, otherwise the first such tag by name.
	SourceTag string
	// Reason explains the decision and, when denied, what to do.
	Reason string
}

// DecidePromotion decides a write of incoming to tag in the repository that
// rule guards, given sourceTags, the live bindings (tag to digest) of the
// source repository. same-tag admits the digest that source:tag holds;
// any-tag admits a digest some source tag holds. The guard applies to tag
// writes only: a manifest pushed by digest binds nothing (an index's
// children arrive that way), so callers should not ask; an empty tag, an
// empty digest or an invalid Require is denied.
func DecidePromotion(rule PromotionRule, source, tag string, incoming digest.Digest, sourceTags map[string]digest.Digest) PromotionDecision {
	d := PromotionDecision{Rule: rule.Name, Source: source, StagingDigest: sourceTags[tag]}
	dest := rule.Into + strings.TrimPrefix(source, rule.From)
	how := fmt.Sprintf("rule %s, %s", rule.Name, rule.Require)
	switch {
	case tag == "":
		d.Reason = fmt.Sprintf("%s only takes digests promoted from %s by tag (%s); name the tag to write", dest, source, how)
		return d
	case incoming == "":
		d.Reason = fmt.Sprintf("the write to %s:%s carries no digest (%s)", dest, tag, how)
		return d
	case rule.Require != SameTag && rule.Require != AnyTag:
		d.Reason = fmt.Sprintf("promotion rule %s has no valid require (same-tag or any-tag); refusing %s:%s", rule.Name, dest, tag)
		return d
	}
	if d.StagingDigest == incoming {
		d.Allowed, d.SourceTag = true, tag
		d.Reason = fmt.Sprintf("%s:%s holds %s; promotion to %s:%s allowed (%s)", source, tag, incoming, dest, tag, how)
		return d
	}
	if rule.Require == AnyTag {
		if t, ok := firstTagFor(sourceTags, incoming); ok {
			d.Allowed, d.SourceTag = true, t
			d.Reason = fmt.Sprintf("%s:%s holds %s; promotion to %s:%s allowed (%s)", source, t, incoming, dest, tag, how)
			return d
		}
	}
	held := fmt.Sprintf("%s:%s holds nothing", source, tag)
	if d.StagingDigest != "" {
		held = fmt.Sprintf("%s:%s holds %s", source, tag, d.StagingDigest)
	}
	switch {
	case rule.Require == AnyTag:
		d.Reason = fmt.Sprintf("%s:%s only takes a digest some tag of %s holds (%s): no tag there holds %s, and %s; push %s to %s first",
			dest, tag, source, how, incoming, held, incoming, source)
	case d.StagingDigest != "":
		d.Reason = fmt.Sprintf("%s:%s only takes the digest %s:%s holds (%s): %s, the write carried %s; promote %s, or push %s to %s:%s first",
			dest, tag, source, tag, how, held, incoming, d.StagingDigest, incoming, source, tag)
	default:
		d.Reason = fmt.Sprintf("%s:%s only takes the digest %s:%s holds (%s): %s, the write carried %s; push %s to %s:%s first",
			dest, tag, source, tag, how, held, incoming, incoming, source, tag)
	}
	return d
}

// firstTagFor returns the smallest tag name bound to d, for determinism.
func firstTagFor(tags map[string]digest.Digest, d digest.Digest) (string, bool) {
	var found []string
	for t, v := range tags {
		if v == d {
			found = append(found, t)
		}
	}
	if len(found) == 0 {
		return "", false
	}
	return slices.Min(found), true
}
