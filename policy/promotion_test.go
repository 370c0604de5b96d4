package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestParseRequire ensures both spellings parse and round-trip, and
// anything else is refused.
func TestParseRequire(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want Require
	}{{"same-tag", SameTag}, {"any-tag", AnyTag}} {
		var r Require
		if err := r.UnmarshalText([]byte(tc.in)); err != nil || r != tc.want {
			t.Errorf("UnmarshalText(%q) = %v, %v", tc.in, r, err)
		}
		if b, err := r.MarshalText(); err != nil || string(b) != tc.in {
			t.Errorf("MarshalText() = %q, %v", b, err)
		}
	}
	for _, s := range []string{"", "same", "SAME-TAG", "digest"} {
		r := AnyTag
		if err := r.UnmarshalText([]byte(s)); !errors.Is(err, ErrInvalidPromotion) || r != AnyTag {
			t.Errorf("UnmarshalText(%q) = %v, %v; want ErrInvalidPromotion and no change", s, r, err)
		}
	}
	if _, err := Require(0).MarshalText(); !errors.Is(err, ErrInvalidPromotion) {
		t.Errorf("Require(0).MarshalText() error = %v", err)
	}
	if Require(0).String() != "Require(0)" {
		t.Errorf("Require(0).String() = %q", Require(0).String())
	}
}

// TestMatchPromotion ensures the first rule whose prefix the repository has
// guards it, and the source keeps the rest of the path.
func TestMatchPromotion(t *testing.T) {
	t.Parallel()
	rules := []PromotionRule{
		{Name: "promotion[0]", Into: "prod/eu/", From: "staging-eu/", Require: SameTag},
		{Into: "prod/", From: "staging/", Require: AnyTag},
	}
	tests := []struct {
		name       string
		repo       string
		wantOK     bool
		wantRule   string
		wantSource string
	}{
		{"a prod repository maps to the same path in staging", "prod/team/app", true, "promotion[1]", "staging/team/app"},
		{"the first matching rule wins", "prod/eu/app", true, "promotion[0]", "staging-eu/app"},
		{"a repository that only shares letters with the prefix is not guarded", "production/app", false, "", ""},
		{"the repository the prefix names is guarded too, from the one the source names", "prod", true, "promotion[1]", "staging"},
		{"so is a nested prefix's", "prod/eu", true, "promotion[0]", "staging-eu"},
		{"a staging repository is not guarded", "staging/team/app", false, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r, src, ok := MatchPromotion(rules, tc.repo)
			if ok != tc.wantOK || r.Name != tc.wantRule || src != tc.wantSource {
				t.Errorf("MatchPromotion(%q) = %q, %q, %v; want %q, %q, %v", tc.repo, r.Name, src, ok, tc.wantRule, tc.wantSource, tc.wantOK)
			}
		})
	}
}

// TestDecidePromotion ensures a production tag only takes the digest that
// passed staging, and the refusal says what staging holds and what to do.
func TestDecidePromotion(t *testing.T) {
	t.Parallel()
	same := PromotionRule{Name: "promotion[0]", Into: "prod/", From: "staging/", Require: SameTag}
	anyTag := PromotionRule{Name: "promotion[0]", Into: "prod/", From: "staging/", Require: AnyTag}
	digestC := digest.FromString("image c")
	staging := map[string]digest.Digest{"1.2.3": digestA, "1.2.4": digestB, "rc": digestB, "beta": digestB}
	tests := []struct {
		name          string
		rule          PromotionRule
		tag           string
		incoming      digest.Digest
		wantAllowed   bool
		wantStaging   digest.Digest
		wantSourceTag string
		wantReason    []string
	}{
		{"same-tag: the digest staging holds for the tag is promoted", same, "1.2.3", digestA, true, digestA, "1.2.3",
			[]string{"staging/team/app:1.2.3 holds " + string(digestA), "allowed"}},
		{"same-tag: a digest staging holds under another tag is refused", same, "1.2.3", digestB, false, digestA, "",
			[]string{"staging/team/app:1.2.3 holds " + string(digestA), "carried " + string(digestB), "promote " + string(digestA), "promotion[0]", "same-tag"}},
		{"same-tag: a tag staging never had is refused", same, "9.9.9", digestA, false, "", "",
			[]string{"staging/team/app:9.9.9 holds nothing", "push " + string(digestA) + " to staging/team/app:9.9.9 first"}},
		{"any-tag: the digest of another staging tag is promoted", anyTag, "1.2.3", digestB, true, digestA, "1.2.4",
			[]string{"staging/team/app:1.2.4 holds " + string(digestB)}},
		{"any-tag: the same tag is preferred when it holds the digest", anyTag, "rc", digestB, true, digestB, "rc", nil},
		{"any-tag: a digest no staging tag holds is refused", anyTag, "1.2.3", digestC, false, digestA, "",
			[]string{"no tag there holds " + string(digestC), "staging/team/app:1.2.3 holds " + string(digestA)}},
		{"a write by digest with no tag is refused", same, "", digestA, false, "", "", []string{"name the tag"}},
		{"a write with no digest is refused", same, "1.2.3", "", false, digestA, "", []string{"no digest"}},
		{"a rule without a valid require fails closed", PromotionRule{Name: "p", Into: "prod/", From: "staging/"}, "1.2.3", digestA, false, digestA, "",
			[]string{"no valid require"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := DecidePromotion(tc.rule, "staging/team/app", tc.tag, tc.incoming, staging)
			if d.Allowed != tc.wantAllowed || d.StagingDigest != tc.wantStaging || d.SourceTag != tc.wantSourceTag {
				t.Fatalf("DecidePromotion = %+v; want allowed %v, staging %q, source tag %q", d, tc.wantAllowed, tc.wantStaging, tc.wantSourceTag)
			}
			if d.Rule != tc.rule.Name || d.Source != "staging/team/app" {
				t.Errorf("rule %q, source %q", d.Rule, d.Source)
			}
			for _, p := range tc.wantReason {
				if !strings.Contains(d.Reason, p) {
					t.Errorf("reason %q does not contain %q", d.Reason, p)
				}
			}
		})
	}
}

// TestDecidePromotionWithEmptySource ensures a source repository with no
// tags at all admits nothing, under either requirement.
func TestDecidePromotionWithEmptySource(t *testing.T) {
	t.Parallel()
	for _, req := range []Require{SameTag, AnyTag} {
		r := PromotionRule{Name: "p", Into: "prod/", From: "staging/", Require: req}
		if d := DecidePromotion(r, "staging/app", "v1", digestA, nil); d.Allowed || !strings.Contains(d.Reason, "holds nothing") {
			t.Errorf("%v: %+v; want refused, staging holds nothing", req, d)
		}
	}
}

// TestPromotionRuleValidate ensures rules that could never be enforced as
// meant are reported, all problems at once.
func TestPromotionRuleValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		rule      PromotionRule
		wantParts []string
	}{
		{"the issue's three lines are valid", PromotionRule{Into: "prod/", From: "staging/", Require: SameTag}, nil},
		{"a prefix without a trailing slash is invalid", PromotionRule{Into: "prod", From: "staging/", Require: SameTag},
			[]string{`into "prod"`}},
		{"empty prefixes and a missing require are all reported", PromotionRule{},
			[]string{`into ""`, `from ""`, "require"}},
		{"overlapping prefixes are invalid", PromotionRule{Into: "prod/", From: "prod/staging/", Require: AnyTag},
			[]string{"overlap"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.rule.Validate()
			if len(tc.wantParts) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidPromotion) {
				t.Fatalf("Validate() = %v, want ErrInvalidPromotion", err)
			}
			for _, p := range tc.wantParts {
				if !strings.Contains(err.Error(), p) {
					t.Errorf("error %q does not mention %q", err, p)
				}
			}
		})
	}
}
