package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// ImportOptions configures ImportTags.
type ImportOptions struct {
	// Repositories limits the walk to repositories matching these globs;
	// empty means every repository in the upstream's catalog.
	Repositories policy.Globs
	// Rate caps taglock's upstream requests per second; zero means no cap.
	Rate float64
	// Progress, when not nil, is called after each tag is handled.
	Progress func(ImportProgress)
}

// ImportProgress is the state of a running import.
type ImportProgress struct {
	Repository string `json:"repository"`
	Tag        string `json:"tag"`
	// Done counts the tags handled so far in all repositories; Total
	// counts the tags listed so far (it grows as repositories are listed).
	Done  int `json:"done"`
	Total int `json:"total"`
}

// ImportReport is what ImportTags did.
type ImportReport struct {
	Repositories int `json:"repositories"` // repositories walked
	Tags         int `json:"tags"`         // tags seen upstream
	Adopted      int `json:"adopted"`      // bindings recorded
	Skipped      int `json:"skipped"`      // tags the ledger already had
	Vanished     int `json:"vanished"`     // tags listed but gone before they were read
}

// ImportTags records a binding for every upstream tag the ledger has never
// seen, in the mode the configuration gives it, with the digest computed
// from the manifest bytes. Tags already in the ledger (tombstones included)
// are skipped, so running it again, or after an interruption, only does
// what is left.
func (d *Drift) ImportTags(ctx context.Context, o ImportOptions) (ImportReport, error) {
	ctx = toolContext(ctx, "taglock import")
	lim := newLimiter(o.Rate)
	defer lim.stop()
	var rep ImportReport
	repos, err := d.read.catalog(ctx, lim)
	if err != nil {
		return rep, err
	}
	for _, repo := range repos {
		if len(o.Repositories) > 0 && !o.Repositories.Match(repo) {
			continue
		}
		tags, err := d.read.tags(ctx, lim, repo)
		if err != nil {
			return rep, err
		}
		rep.Repositories++
		total := rep.Tags + len(tags)
		for _, tag := range tags {
			rep.Tags++
			if _, err := d.ledger.Binding(ctx, repo, tag); err == nil {
				rep.Skipped++
			} else if !errors.Is(err, storage.ErrNotFound) {
				return rep, fmt.Errorf("%w: binding %s:%s: %v", ErrLedger, repo, tag, err)
			} else {
				if err := lim.wait(ctx); err != nil {
					return rep, err
				}
				mode, rule := d.states.im.ModeFor(repo, tag)
				_, found, err := d.adopter.adopt(ctx, http.Header{}, repo, tag, mode, rule)
				if err != nil {
					return rep, fmt.Errorf("import %s:%s: %w", repo, tag, err)
				}
				if found {
					rep.Adopted++
				} else {
					rep.Vanished++
				}
			}
			if o.Progress != nil {
				o.Progress(ImportProgress{Repository: repo, Tag: tag, Done: rep.Tags, Total: total})
			}
		}
	}
	return rep, nil
}
