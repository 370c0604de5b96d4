package storage

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxJobStateSize is the largest job state value a ledger stores, 1000 KiB,
// which one etcd request carries within its default limit.
const MaxJobStateSize = 1000 << 10

// MaxJobStateName is the longest job state name, in bytes.
const MaxJobStateName = 512

// ValidJobStateName returns an error wrapping ErrInvalid unless name can
// name job state: 1 to MaxJobStateName bytes of valid UTF-8 without NUL.
// Names are compared bytewise; by convention they are paths such as
// "retention/journal".
func ValidJobStateName(name string) error {
	switch {
	case name == "", len(name) > MaxJobStateName:
		return fmt.Errorf("%w: job state name %q must have 1 to %d bytes", ErrInvalid, name, MaxJobStateName)
	case strings.ContainsRune(name, 0), !utf8.ValidString(name):
		return fmt.Errorf("%w: job state name %q must be UTF-8 without NUL", ErrInvalid, name)
	}
	return nil
}

// ValidJobStates checks a PutJobStates batch: every name valid and every
// value at most MaxJobStateSize bytes.
func ValidJobStates(values map[string][]byte) error {
	for name, v := range values {
		if err := ValidJobStateName(name); err != nil {
			return err
		}
		if len(v) > MaxJobStateSize {
			return fmt.Errorf("%w: job state %q has %d bytes, more than %d", ErrInvalid, name, len(v), MaxJobStateSize)
		}
	}
	return nil
}

// BindingChange is one change WatchBindings delivers.
type BindingChange struct {
	// Repo and Tag name the binding written; both are "" when Reset is
	// set.
	Repo, Tag string
	// Reset means changes may have been missed: every binding may have
	// changed since the last change delivered.
	Reset bool
}
