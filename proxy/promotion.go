package proxy

import (
	"context"
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
)

// promotion is the promotion guard (Options.Promotion).
type promotion struct {
	rules  []policy.PromotionRule
	ledger Ledger
	audit  auditor
}

// check refuses a tag write into a guarded repository unless the source
// repository's ledger bindings hold the digest. An identical re-push is not
// asked: the tag already holds that digest.
func (s promotion) check(ctx context.Context, repo, tag string, dgst digest.Digest) error {
	rule, source, ok := policy.MatchPromotion(s.rules, repo)
	if !ok {
		return nil
	}
	bs, err := s.ledger.Bindings(ctx, source)
	if err != nil {
		return fmt.Errorf("%w: bindings of %s: %v", ErrLedger, source, err)
	}
	held := make(map[string]digest.Digest, len(bs))
	for _, b := range bs {
		if !b.Deleted {
			held[b.Tag] = b.Digest
		}
	}
	d := policy.DecidePromotion(rule, source, tag, dgst, held)
	if d.Allowed {
		return nil
	}
	v := &Violation{Reason: ReasonNotPromoted, Repo: repo, Tag: tag, Recorded: d.StagingDigest, Attempted: dgst, Rule: d.Rule,
		Source: d.Source, Hint: "Promote the digest staging holds, e.g. taglock promote " + d.Source + ":" + tag + " " + repo + ":" + tag + ".",
		text: "promotion guard: " + d.Reason + "."}
	s.audit.refuse(ctx, v)
	return v
}
