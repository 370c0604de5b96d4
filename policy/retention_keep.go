package policy

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// decideTags decides every live tag by the keep rules and immutability.
// Referrer tags that nothing keeps and whose subject is known come back
// pending: run decides them with their subject.
func (pl *planner) decideTags() []tagEval {
	var live []*TagState
	for i := range pl.in.Tags {
		if !pl.in.Tags[i].Deleted {
			live = append(live, &pl.in.Tags[i])
		}
	}
	slices.SortStableFunc(live, func(a, b *TagState) int {
		return cmp.Or(strings.Compare(a.Tag, b.Tag), strings.Compare(string(a.Digest), string(b.Digest)))
	})
	ranks := pl.rank(live)

	evals := make([]tagEval, 0, len(live))
	for _, t := range live {
		e := tagEval{TagDecision: TagDecision{Tag: t.Tag, Digest: t.Digest}}
		var reasons []string
		keep := func(by, reason string) {
			e.KeptBy = append(e.KeptBy, by)
			reasons = append(reasons, reason)
		}
		if t.Digest == "" {
			keep("no digest", "the ledger records no digest for it")
		}
		if len(pl.p.Keep) == 0 {
			keep("no keep rules", "the policy has no keep rules, so every tag is kept")
		}
		for i, k := range pl.p.Keep {
			if detail, ok := pl.retains(k, t, ranks[i][t]); ok {
				name := pl.keepName(k, i)
				keep(name, fmt.Sprintf("kept by %s (%s)", name, detail))
			}
		}
		releasable := false
		// Compare the exact age; round it only for the message.
		exact := pl.now.Sub(t.PushedAt)
		age := exact.Round(time.Second)
		if t.Mode != Mutable && t.Mode != Warn && !t.PushedAt.IsZero() {
			switch ra := pl.p.Immutable.ReleaseAfter; {
			case ra <= 0:
				keep("immutable", "immutable, and the policy keeps immutable tags (immutable: keep)")
			case exact < ra:
				keep("immutable", fmt.Sprintf("immutable, pushed %s ago; released only after %s (immutable: release_after)",
					fmtDuration(age), fmtDuration(ra)))
			default:
				releasable = true
			}
		}
		if t.PushedAt.IsZero() {
			keep("unknown push time", "when it was first pushed is unknown, so no age-based rule can release it")
		}
		if len(reasons) > 0 {
			e.Kept, e.Reason = true, reasons[0]
			evals = append(evals, e)
			continue
		}
		e.Reason = ReasonNoKeepRule
		if releasable {
			e.Released = true
			e.Reason += fmt.Sprintf("; immutable, pushed %s ago, past release_after %s: released, it stays bound in the ledger as a tombstone",
				fmtDuration(age), fmtDuration(pl.p.Immutable.ReleaseAfter))
		}
		if s, ok := referrerTagSubject(t.Tag); ok && pl.isKnown(s) && s != t.Digest {
			e.subject, e.pending = s, true
		}
		evals = append(evals, e)
	}
	return evals
}

// rank returns, per keep rule with most_recent, each counted tag's place
// (1 = newest) among the live tags that rule's tag globs select. Referrer
// tags are not counted.
func (pl *planner) rank(live []*TagState) []map[*TagState]int {
	ranks := make([]map[*TagState]int, len(pl.p.Keep))
	for i, k := range pl.p.Keep {
		if k.MostRecent <= 0 {
			continue
		}
		var cand []*TagState
		for _, t := range live {
			if _, ref := referrerTagSubject(t.Tag); !ref && k.Tags.Match(t.Tag) {
				cand = append(cand, t)
			}
		}
		slices.SortStableFunc(cand, func(a, b *TagState) int {
			return cmp.Or(b.PushedAt.Compare(a.PushedAt), strings.Compare(a.Tag, b.Tag))
		})
		ranks[i] = make(map[*TagState]int, len(cand))
		for n, t := range cand {
			ranks[i][t] = n + 1
		}
	}
	return ranks
}

// retains reports whether keep rule k retains t, and says how. rank is t's
// place for the rule's most_recent, zero when not counted.
func (pl *planner) retains(k KeepRule, t *TagState, rank int) (string, bool) {
	var details []string
	if len(k.Tags) > 0 {
		if !k.Tags.Match(t.Tag) {
			return "", false
		}
		details = append(details, "tags: "+k.Tags.String())
	}
	if k.MostRecent > 0 {
		if rank == 0 || rank > k.MostRecent {
			return "", false
		}
		details = append(details, fmt.Sprintf("most_recent: %d, it is number %d by push time", k.MostRecent, rank))
	}
	if k.PushedWithin > 0 {
		age := pl.now.Sub(t.PushedAt).Round(time.Second)
		if t.PushedAt.IsZero() || age > k.PushedWithin {
			return "", false
		}
		details = append(details, fmt.Sprintf("pushed_within: %s, pushed %s ago", fmtDuration(k.PushedWithin), fmtDuration(age)))
	}
	if k.PulledWithin > 0 {
		lp := pl.lastPulled(t)
		ago := pl.now.Sub(lp).Round(time.Second)
		if lp.IsZero() || ago > k.PulledWithin {
			return "", false
		}
		details = append(details, fmt.Sprintf("pulled_within: %s, pulled %s ago", fmtDuration(k.PulledWithin), fmtDuration(ago)))
	}
	if len(details) == 0 {
		details = append(details, "it sets no criterion, so it keeps every tag")
	}
	return strings.Join(details, "; "), true
}

// keepName returns the rule's name, or one built from its position.
func (pl *planner) keepName(k KeepRule, i int) string {
	if k.Name != "" {
		return k.Name
	}
	if pl.p.Name != "" {
		return fmt.Sprintf("%s.keep[%d]", pl.p.Name, i)
	}
	return fmt.Sprintf("keep[%d]", i)
}

// referrerTagSubject returns the subject digest a referrer tag names: the
// OCI referrers fallback tag "sha256-<hex>" and the cosign-style
// "sha256-<hex>.sig", ".att", ".sbom" and other suffixes.
func referrerTagSubject(tag string) (digest.Digest, bool) {
	alg, rest, ok := strings.Cut(tag, "-")
	if !ok {
		return "", false
	}
	var n int
	switch alg {
	case "sha256":
		n = 64
	case "sha512":
		n = 128
	default:
		return "", false
	}
	if len(rest) < n || (len(rest) > n && rest[n] != '.') {
		return "", false
	}
	hex := rest[:n]
	for i := 0; i < len(hex); i++ {
		if c := hex[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return "", false
		}
	}
	return digest.Digest(alg + ":" + hex), true
}
