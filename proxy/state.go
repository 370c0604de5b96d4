package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// tagState is a tag's effective state: what every decision about the tag
// rests on. It is computed in one place, stateOf, for pushes, deletes, the
// reconciler, pins, verify and repair alike.
type tagState struct {
	tag string
	// current is the ledger's binding; found is false when there is none.
	current storage.Binding
	found   bool
	// mode governs the tag: the configured mode, or immutable when the
	// binding was recorded immutable (see policy.Effective).
	mode policy.Mode
	// rule names what set mode, for messages: the configured rule, or the
	// recorded one marked as such.
	rule string
	// bindRule is the rule a new record of the tag keeps: the configured
	// rule, or the one recorded when the mode comes from the record.
	bindRule string
	// bound is the digest that binds the tag: the binding's, when it is
	// live or a tombstone that still binds (see policy.Binds); "" when the
	// tag is free.
	bound digest.Digest
}

// seen is what the state shows the ledger's compare-and-swap.
func (st tagState) seen() storage.Seen {
	if !st.found {
		return storage.Seen{}
	}
	return st.current.Seen()
}

// stateOf returns the effective state of repo:tag given its binding (nil
// when the ledger has none).
func (s *Server) stateOf(repo, tag string, b *storage.Binding) tagState {
	configured, rule := s.im.ModeFor(repo, tag)
	st := tagState{tag: tag, mode: configured, rule: rule, bindRule: rule}
	if b == nil {
		return st
	}
	st.current, st.found = *b, true
	st.mode = policy.Effective(configured, b.Mode)
	if st.mode != configured {
		st.rule, st.bindRule = b.Rule+" (recorded when first pushed)", b.Rule
	}
	if policy.Binds(st.mode, b.Deleted) {
		st.bound = b.Digest
	}
	return st
}

// readState reads repo:tag's binding and returns its effective state.
func (s *Server) readState(ctx context.Context, repo, tag string) (tagState, error) {
	b, err := s.ledger.Binding(ctx, repo, tag)
	switch {
	case err == nil:
		return s.stateOf(repo, tag, &b), nil
	case errors.Is(err, storage.ErrNotFound):
		return s.stateOf(repo, tag, nil), nil
	}
	return tagState{}, fmt.Errorf("%w: binding %s:%s: %v", ErrLedger, repo, tag, err)
}

// lookupTag returns the tag's state for a push, first adopting an upstream
// tag the ledger has never seen (unless it is mutable), so tags that predate
// taglock are protected too. Adoption is the one ledger write a push makes
// before it reserves; it records what the upstream already holds, and the
// reservation then checks that nothing changed since.
func (s *Server) lookupTag(ctx context.Context, h http.Header, repo, tag string) (tagState, error) {
	st, err := s.readState(ctx, repo, tag)
	if err != nil || st.found || st.mode == policy.Mutable {
		return st, err
	}
	b, found, err := s.adopt(ctx, h, repo, tag, st.mode, st.rule)
	if err != nil {
		if st.mode == policy.Warn && !errors.As(err, new(*upstreamAnswer)) {
			// Warn never refuses, so a failed lookup cannot make it allow
			// something it should not; note it and go on.
			s.log.Warn().Err(err).Str("repo", repo).Str("tag", tag).Msg("warn mode: upstream lookup failed")
			return st, nil
		}
		return st, err
	}
	if found {
		return s.stateOf(repo, tag, &b), nil
	}
	return st, nil
}
