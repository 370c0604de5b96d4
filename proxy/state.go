package proxy

import (
	"context"
	"errors"
	"fmt"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// states computes tags' effective states: the one place that says which
// mode governs a tag and which digest binds it, for pushes, deletes, the
// settler, pins, verify and repair alike.
type states struct {
	ledger Ledger
	im     policy.Immutability
}

// tagState is a tag's effective state: what every decision about the tag
// rests on.
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

// of returns the effective state of repo:tag given its binding (nil when
// the ledger has none).
func (s states) of(repo, tag string, b *storage.Binding) tagState {
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

// read reads repo:tag's binding and returns its effective state.
func (s states) read(ctx context.Context, repo, tag string) (tagState, error) {
	b, err := s.ledger.Binding(ctx, repo, tag)
	switch {
	case err == nil:
		return s.of(repo, tag, &b), nil
	case errors.Is(err, storage.ErrNotFound):
		return s.of(repo, tag, nil), nil
	}
	return tagState{}, fmt.Errorf("%w: binding %s:%s: %v", ErrLedger, repo, tag, err)
}
