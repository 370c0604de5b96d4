package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// adopter records in the ledger the tags the upstream holds that taglock
// never saw, so tags that predate taglock are protected too.
type adopter struct {
	ledger Ledger
	read   reader
	states states
	graphs graphs
	audit  auditor
	log    zerolog.Logger
	now    func() time.Time
}

// lookupTag returns the tag's state for a push, first adopting an upstream
// tag the ledger has never seen (unless it is mutable), so tags that predate
// taglock are protected too. Adoption is the one ledger write a push makes
// before it reserves; it records what the upstream already holds, and the
// reservation then checks that nothing changed since.
func (a adopter) lookupTag(ctx context.Context, h http.Header, repo, tag string) (tagState, error) {
	st, err := a.states.read(ctx, repo, tag)
	if err != nil || st.found || st.mode == policy.Mutable {
		return st, err
	}
	b, found, err := a.adopt(ctx, h, repo, tag, st.mode, st.rule)
	if err != nil {
		if st.mode == policy.Warn && !errors.As(err, new(*upstreamAnswer)) {
			// Warn never refuses, so a failed lookup cannot make it allow
			// something it should not; note it and go on.
			a.log.Warn().Err(err).Str("repo", repo).Str("tag", tag).Msg("warn mode: upstream lookup failed")
			return st, nil
		}
		return st, err
	}
	if found {
		return a.states.of(repo, tag, &b), nil
	}
	return st, nil
}

// adopt looks a tag up on the upstream and, when it exists, records its
// digest as the binding, so tags that predate taglock are protected too.
// The digest is computed from the bytes received, never taken from a header.
func (a adopter) adopt(ctx context.Context, h http.Header, repo, tag string, mode policy.Mode, rule string) (storage.Binding, bool, error) {
	body, mediaType, found, err := a.read.manifest(ctx, h, repo, tag)
	if err != nil || !found {
		return storage.Binding{}, false, err
	}
	dgst := digest.FromBytes(body)
	refs, err := parseManifest(mediaType, body)
	if err != nil {
		return storage.Binding{}, false, fmt.Errorf("%w: upstream manifest %s:%s does not parse: %v", ErrLookup, repo, tag, err)
	}
	g, err := a.graphs.walk(ctx, h, repo, refs)
	if err != nil {
		return storage.Binding{}, false, err
	}
	now := a.now()
	b := storage.Binding{Repo: repo, Tag: tag, Digest: dgst, MediaType: refs.MediaType, Size: int64(len(body)),
		Mode: mode, Rule: rule, PushedAt: now, PushedBy: "upstream (adopted)", Closure: g.closure}
	if mode == policy.Immutable {
		b.Manifest = body
	}
	ri := info(ctx)
	ev := storage.Event{Time: now, Kind: storage.EventAdopted, Repo: repo, Tag: tag, Digest: dgst, User: ri.user, Rule: rule,
		RequestID: ri.id, Message: "tag existed on the upstream before taglock recorded it; its digest is now the binding"}
	if err := a.ledger.Put(ctx, []storage.Binding{b}, []storage.Event{ev}); err != nil {
		return storage.Binding{}, false, fmt.Errorf("%w: adopt: %v", ErrLedger, err)
	}
	a.graphs.record(ctx, append(g.learned, manifestRecord(repo, dgst, int64(len(body)), refs))...)
	a.audit.audit.Info().Str("event", "adopted").Str("repo", repo).Str("tag", tag).Str("digest", dgst.String()).Str("rule", rule).
		Str("request_id", ri.id).Msg("adopted upstream tag into the ledger")
	return b, true, nil
}

// adoptRepo adopts every upstream tag of repo that the ledger has never
// seen, mutable ones included, so a delete by digest or of a blob sees every
// tag it could remove or break: to protect the immutable ones, to ask the
// access rules about each, and to record each one it removes.
func (a adopter) adoptRepo(ctx context.Context, h http.Header, repo string) error {
	last := ""
	for range 10000 {
		tags, next, err := a.read.tagPage(ctx, h, repo, last)
		if err != nil {
			return err
		}
		for _, tag := range tags {
			mode, rule := a.states.im.ModeFor(repo, tag)
			if _, err := a.ledger.Binding(ctx, repo, tag); err == nil {
				continue
			} else if !errors.Is(err, storage.ErrNotFound) {
				return fmt.Errorf("%w: binding %s:%s: %v", ErrLedger, repo, tag, err)
			}
			if _, _, err := a.adopt(ctx, h, repo, tag, mode, rule); err != nil {
				return err
			}
		}
		if next == "" {
			return nil
		}
		if next == last {
			// The upstream answered the same page again (it ignores
			// ?last=): the rest of the list cannot be read.
			return fmt.Errorf("%w: tag list of %s repeats the page after %q", ErrLookup, repo, last)
		}
		last = next
	}
	return fmt.Errorf("%w: tag list of %s did not end", ErrLookup, repo)
}
