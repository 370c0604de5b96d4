package policy

import (
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
)

// ErrInvalidMode is returned, wrapped, when text does not name a Mode.
var ErrInvalidMode = errors.New("invalid immutability mode")

// Mode says how a tag may change once it is bound to a digest.
type Mode uint8

const (
	// Immutable tags keep their first digest forever and cannot be deleted.
	// It is the zero value, so an unset mode fails closed.
	Immutable Mode = iota
	// Mutable tags may move to another digest and may be deleted.
	Mutable
	// Warn tags behave like Mutable ones, but every move or delete is
	// reported, as a step before switching a repository to Immutable.
	Warn
)

// ParseMode parses "immutable", "mutable" or "warn".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "immutable":
		return Immutable, nil
	case "mutable":
		return Mutable, nil
	case "warn":
		return Warn, nil
	}
	return Immutable, fmt.Errorf("%w %q: want immutable, mutable or warn", ErrInvalidMode, s)
}

// String returns the configuration spelling of m, or "Mode(N)" for a value
// that is not a Mode.
func (m Mode) String() string {
	switch m {
	case Immutable:
		return "immutable"
	case Mutable:
		return "mutable"
	case Warn:
		return "warn"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// MarshalText returns the configuration spelling of m. It fails for a value
// that is not a Mode.
func (m Mode) MarshalText() ([]byte, error) {
	switch m {
	case Immutable, Mutable, Warn:
		return []byte(m.String()), nil
	}
	return nil, fmt.Errorf("%w: %s", ErrInvalidMode, m)
}

// UnmarshalText parses text with ParseMode. On error m is left unchanged.
func (m *Mode) UnmarshalText(text []byte) error {
	v, err := ParseMode(string(text))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// Rule gives a Mode to the tags it selects.
type Rule struct {
	// Name identifies the rule in decisions and messages, for example
	// "immutability.rules[0]". When empty, ModeFor names it by position.
	Name string
	// Repositories selects repositories; empty selects all.
	Repositories Globs
	// Tags selects tags; empty selects all.
	Tags Globs
	// Mode is the mode of every tag the rule selects.
	Mode Mode
}

// Immutability is the immutability configuration: ordered rules and a
// default for tags that no rule selects.
type Immutability struct {
	// Default applies when no rule matches. Its zero value is Immutable.
	Default Mode
	// Rules are tried in order; the first that matches decides.
	Rules []Rule
}

// DefaultImmutability returns the built-in configuration: every tag is
// immutable except the tags that clients move by design, namely "latest"
// and the signature, attestation, SBOM and referrers-fallback tags that
// cosign and oras rewrite.
func DefaultImmutability() Immutability {
	return Immutability{
		Default: Immutable,
		Rules: []Rule{{
			Name:         "immutability.rules[0] (built-in)",
			Repositories: Globs{MustGlob("**")},
			Tags: Globs{
				MustGlob("latest"), MustGlob("sha256-*"),
				MustGlob("*.sig"), MustGlob("*.att"), MustGlob("*.sbom"),
			},
			Mode: Mutable,
		}},
	}
}

// ModeFor returns the configured mode of repo:tag and the name of the rule
// that chose it: the first rule whose repositories and tags both match, or
// Default and "immutability.default" when none does.
func (im Immutability) ModeFor(repo, tag string) (Mode, string) {
	for i, r := range im.Rules {
		if r.Repositories.Match(repo) && r.Tags.Match(tag) {
			return r.Mode, ruleName(r.Name, "immutability.rules", i)
		}
	}
	return im.Default, "immutability.default"
}

// Effective returns the mode that governs a bound tag. A tag recorded as
// immutable when it was bound stays immutable even if the configuration
// later relaxes ("binding forever"); otherwise the configured mode applies.
// recorded is the mode the ledger stored with the binding. A recorded value
// that is neither Mutable nor Warn counts as Immutable, so a damaged record
// fails closed.
func Effective(configured, recorded Mode) Mode {
	switch recorded {
	case Mutable, Warn:
		return configured
	}
	return Immutable
}

// Binds reports whether a tag's recorded binding still binds it, given the
// mode that governs the tag (see Effective): a live binding always does; a
// tombstone, left when the tag was deleted, binds only an immutable tag, so
// that deleting an immutable tag never frees it for other content. A mode
// that is not a Mode binds, so a damaged record fails closed.
func Binds(mode Mode, deleted bool) bool {
	return !deleted || (mode != Mutable && mode != Warn)
}

// Verdict is the outcome of a tag write.
type Verdict uint8

const (
	// Bind records the first binding of a free tag.
	Bind Verdict = iota + 1
	// Identical re-confirms the digest the tag already holds; it is allowed
	// in every mode, so CI retries and multi-arch pushes succeed.
	Identical
	// Move rebinds a mutable tag to another digest.
	Move
	// WarnMove rebinds a warn-mode tag and must be reported.
	WarnMove
	// Deny refuses to move an immutable tag.
	Deny
)

// String returns "bind", "identical", "move", "warn-move" or "deny".
func (v Verdict) String() string {
	switch v {
	case Bind:
		return "bind"
	case Identical:
		return "identical"
	case Move:
		return "move"
	case WarnMove:
		return "warn-move"
	case Deny:
		return "deny"
	}
	return fmt.Sprintf("Verdict(%d)", uint8(v))
}

// Allowed reports whether the write may proceed. Deny and any value that is
// not a Verdict (including the zero value) are refusals.
func (v Verdict) Allowed() bool {
	return v == Bind || v == Identical || v == Move || v == WarnMove
}

// DecideWrite decides a write of incoming to a tag whose live binding is
// bound ("" when the tag is free). A free tag binds; the same digest is
// identical in any mode; a different digest moves a mutable tag, moves a
// warn tag with a warning, and is denied for an immutable tag. An empty
// incoming digest, or a mode that is not a Mode, is denied.
func DecideWrite(mode Mode, bound, incoming digest.Digest) Verdict {
	switch {
	case incoming == "":
		return Deny
	case bound == "":
		return Bind
	case bound == incoming:
		return Identical
	}
	switch mode {
	case Mutable:
		return Move
	case Warn:
		return WarnMove
	}
	return Deny
}

// DeleteVerdict is the outcome of a tag delete.
type DeleteVerdict uint8

const (
	// DeleteAllow lets a mutable tag be deleted.
	DeleteAllow DeleteVerdict = iota + 1
	// DeleteWarn lets a warn-mode tag be deleted and must be reported.
	DeleteWarn
	// DeleteDeny refuses to delete an immutable tag.
	DeleteDeny
)

// String returns "allow", "warn" or "deny".
func (v DeleteVerdict) String() string {
	switch v {
	case DeleteAllow:
		return "allow"
	case DeleteWarn:
		return "warn"
	case DeleteDeny:
		return "deny"
	}
	return fmt.Sprintf("DeleteVerdict(%d)", uint8(v))
}

// Allowed reports whether the delete may proceed.
func (v DeleteVerdict) Allowed() bool { return v == DeleteAllow || v == DeleteWarn }

// DecideDelete decides a delete of a tag in mode: immutable tags are
// denied, warn tags are allowed with a warning, mutable tags are allowed.
// A value that is not a Mode is denied.
func DecideDelete(mode Mode) DeleteVerdict {
	switch mode {
	case Mutable:
		return DeleteAllow
	case Warn:
		return DeleteWarn
	}
	return DeleteDeny
}
