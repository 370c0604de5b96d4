package proxy

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"

	digest "github.com/opencontainers/go-digest"
	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// Drift kinds.
const (
	DriftMoved   = "moved"   // the upstream tag holds another digest than the ledger
	DriftDeleted = "deleted" // the ledger binds the tag; the upstream no longer has it
	DriftNew     = "new"     // the upstream has a tag the ledger never recorded
	// DriftIncomplete means the upstream still has the tag on its recorded
	// digest, but not everything that digest references: a child manifest
	// or blob of its closure is gone, so the tag no longer pulls.
	DriftIncomplete = "incomplete"
)

// Finding is one tag whose upstream state differs from the ledger.
type Finding struct {
	Repo string `json:"repo"`
	Tag  string `json:"tag"`
	Kind string `json:"kind"` // DriftMoved, DriftDeleted or DriftNew
	// Mode is the mode that governs the tag: the recorded one for a bound
	// immutable tag, the configured one otherwise.
	Mode     policy.Mode   `json:"mode"`
	Recorded digest.Digest `json:"recorded,omitempty"` // the ledger's digest ("" for new tags)
	Actual   digest.Digest `json:"actual,omitempty"`   // the upstream's digest ("" for deleted tags)
	// Missing lists, for an incomplete tag, the digests of its closure the
	// upstream no longer has.
	Missing []digest.Digest `json:"missing,omitempty"`
	// Immutable is true for a moved or deleted tag whose mode is
	// immutable: a tag taglock promised would not change.
	Immutable bool `json:"immutable"`
	// Repairable is true when Immutable, moved or deleted, and the ledger
	// kept the manifest bytes, so Repair can put them back. Missing blobs
	// are never repairable: the ledger keeps manifests, not blobs.
	Repairable bool `json:"repairable"`
}

// VerifyOptions configures Verify.
type VerifyOptions struct {
	// Repositories limits the check to repositories matching these globs;
	// empty means every repository in the upstream's catalog or the ledger.
	Repositories policy.Globs
	// Rate caps upstream requests per second; zero means no cap.
	Rate float64
}

// VerifyReport is the result of Verify.
type VerifyReport struct {
	Repositories int       `json:"repositories"` // repositories compared
	Tags         int       `json:"tags"`         // tags compared (upstream and ledger, counted once)
	Findings     []Finding `json:"findings"`     // sorted by repository, then tag
}

// ImmutableDrift reports whether any finding concerns an immutable tag.
func (r VerifyReport) ImmutableDrift() bool {
	return slices.ContainsFunc(r.Findings, func(f Finding) bool { return f.Immutable })
}

// Verify compares every tag of the upstream with the ledger and reports the
// differences: writes and deletes that went around taglock. It changes
// nothing.
func (d *Drift) Verify(ctx context.Context, o VerifyOptions) (VerifyReport, error) {
	ctx = toolContext(ctx, "taglock verify")
	lim := newLimiter(o.Rate)
	defer lim.stop()
	var rep VerifyReport
	upRepos, err := d.read.catalog(ctx, lim)
	if err != nil {
		return rep, err
	}
	known, err := d.ledger.Repositories(ctx)
	if err != nil {
		return rep, fmt.Errorf("%w: repositories: %v", ErrLedger, err)
	}
	repos := append(slices.Clone(upRepos), known...)
	slices.Sort(repos)
	repos = slices.Compact(repos)
	rep.Findings = []Finding{}
	for _, repo := range repos {
		if len(o.Repositories) > 0 && !o.Repositories.Match(repo) {
			continue
		}
		n, found, err := d.verifyRepo(ctx, lim, repo)
		if err != nil {
			return rep, err
		}
		rep.Repositories++
		rep.Tags += n
		rep.Findings = append(rep.Findings, found...)
	}
	return rep, nil
}

// verifyRepo compares one repository and returns how many tags it compared
// and the findings, sorted by tag.
func (d *Drift) verifyRepo(ctx context.Context, lim *limiter, repo string) (int, []Finding, error) {
	tags, err := d.read.tags(ctx, lim, repo)
	if err != nil {
		return 0, nil, err
	}
	bindings, err := d.ledger.Bindings(ctx, repo)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: bindings of %s: %v", ErrLedger, repo, err)
	}
	bound := make(map[string]storage.Binding, len(bindings))
	for _, b := range bindings {
		bound[b.Tag] = b
	}
	upstream := make(map[string]bool, len(tags))
	var out []Finding
	present := map[digest.Digest]bool{} // what the upstream still has, asked once per repository
	for _, tag := range tags {
		upstream[tag] = true
		if err := lim.wait(ctx); err != nil {
			return 0, nil, err
		}
		body, _, found, err := d.read.manifest(ctx, http.Header{}, repo, tag)
		if err != nil {
			return 0, nil, fmt.Errorf("verify %s:%s: %w", repo, tag, err)
		}
		if !found {
			upstream[tag] = false // listed, then gone: judged below as absent
			continue
		}
		actual := digest.FromBytes(body)
		b, ok := bound[tag]
		switch {
		case !ok:
			mode, _ := d.states.im.ModeFor(repo, tag)
			out = append(out, Finding{Repo: repo, Tag: tag, Kind: DriftNew, Mode: mode, Actual: actual})
		case b.Digest != actual:
			out = append(out, d.finding(b, DriftMoved, actual))
		case !b.Deleted:
			missing, err := d.missing(ctx, lim, repo, b.Closure, present)
			if err != nil {
				return 0, nil, fmt.Errorf("verify %s:%s: %w", repo, tag, err)
			}
			if len(missing) > 0 {
				f := d.finding(b, DriftIncomplete, actual)
				f.Missing, f.Repairable = missing, false
				out = append(out, f)
			}
		}
	}
	for _, b := range bindings {
		if !upstream[b.Tag] && !b.Deleted {
			out = append(out, d.finding(b, DriftDeleted, ""))
		}
	}
	slices.SortFunc(out, func(a, b Finding) int { return strings.Compare(a.Tag, b.Tag) })
	n := len(upstream)
	for _, b := range bindings {
		if _, seen := upstream[b.Tag]; !seen {
			n++
		}
	}
	return n, out, nil
}

// finding describes a bound tag that drifted.
func (d *Drift) finding(b storage.Binding, kind string, actual digest.Digest) Finding {
	st := d.states.of(b.Repo, b.Tag, &b)
	f := Finding{Repo: b.Repo, Tag: b.Tag, Kind: kind, Mode: st.mode, Recorded: b.Digest, Actual: actual,
		Immutable: st.mode == policy.Immutable}
	f.Repairable = f.Immutable && len(b.Manifest) > 0
	return f
}

// missing returns the digests of closure the upstream no longer has in
// repo, as a blob or as a manifest. present caches answers across tags.
func (d *Drift) missing(ctx context.Context, lim *limiter, repo string, closure []digest.Digest, present map[digest.Digest]bool) ([]digest.Digest, error) {
	var out []digest.Digest
	for _, c := range closure {
		has, known := present[c]
		if !known {
			for _, path := range []string{"/v2/" + repo + "/blobs/" + c.String(), "/v2/" + repo + "/manifests/" + c.String()} {
				if err := lim.wait(ctx); err != nil {
					return nil, err
				}
				gone, err := d.read.absent(ctx, nil, path)
				if err != nil {
					return nil, err
				}
				if has = !gone; has {
					break
				}
			}
			present[c] = has
		}
		if !has {
			out = append(out, c)
		}
	}
	return out, nil
}
