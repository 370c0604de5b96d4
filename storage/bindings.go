package storage

import (
	"context"
	"encoding/json"
	"fmt"

	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// Binding returns the binding of repo:tag, tombstones included
// (Deleted=true). It returns an error wrapping ErrNotFound when there is none.
func (l *Ledger) Binding(ctx context.Context, repo, tag string) (Binding, error) {
	var b Binding
	err := l.view(ctx, func(tx *bolt.Tx) error {
		var ok bool
		var err error
		b, ok, err = getBinding(tx, repo, tag)
		if err == nil && !ok {
			err = fmt.Errorf("binding %s:%s: %w", repo, tag, ErrNotFound)
		}
		return err
	})
	return b, err
}

// Bindings returns every binding of repo, tombstones included, sorted by tag.
func (l *Ledger) Bindings(ctx context.Context, repo string) ([]Binding, error) {
	var out []Binding
	err := l.view(ctx, func(tx *bolt.Tx) error {
		return forPrefix(tx.Bucket(bucketBindings), prefix(repo), func(k, v []byte) (bool, error) {
			b, err := decodeBinding(k, v)
			out = append(out, b)
			return true, err
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Repositories returns, sorted, the repositories with at least one binding.
func (l *Ledger) Repositories(ctx context.Context) ([]string, error) {
	var out []string
	err := l.view(ctx, func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketBindings).Cursor()
		for k, _ := c.First(); k != nil; {
			parts, ok := splitKey(k, 2)
			if !ok {
				return fmt.Errorf("binding key %q: %w", k, ErrCorrupt)
			}
			out = append(out, parts[0])
			// Skip the rest of this repository: its keys all start with
			// repo\x00, and repo\x01 sorts right after them.
			k, _ = c.Seek(prefixEnd(prefix(parts[0])))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Referencing returns the bindings of repo, tombstones included, whose Digest
// is d or whose Closure contains d, sorted by tag. It reads an index, not
// every binding.
func (l *Ledger) Referencing(ctx context.Context, repo string, d digest.Digest) ([]Binding, error) {
	var out []Binding
	err := l.view(ctx, func(tx *bolt.Tx) error {
		p := prefix(repo, string(d))
		return forPrefix(tx.Bucket(bucketBindingRefs), p, func(k, _ []byte) (bool, error) {
			tag := string(k[len(p):])
			b, ok, err := getBinding(tx, repo, tag)
			if err != nil {
				return false, err
			}
			if !ok {
				return false, fmt.Errorf("index entry %s:%s@%s has no binding: %w", repo, tag, d, ErrCorrupt)
			}
			out = append(out, b)
			return true, nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Put upserts bindings without a reservation (adoption, import, tombstoning,
// restore) and appends events, all in one transaction. Each binding replaces
// the whole record of its tag.
func (l *Ledger) Put(ctx context.Context, bindings []Binding, events []Event) error {
	bindings, err := normalizeBindings(bindings)
	if err != nil {
		return err
	}
	if err := checkEvents(events); err != nil {
		return err
	}
	return l.update(ctx, func(tx *bolt.Tx) error {
		for _, b := range bindings {
			if err := putBinding(tx, b); err != nil {
				return err
			}
		}
		return l.appendEvents(tx, events)
	})
}

// getBinding reads one binding; ok is false when there is none.
func getBinding(tx *bolt.Tx, repo, tag string) (b Binding, ok bool, err error) {
	k := key(repo, tag)
	v := tx.Bucket(bucketBindings).Get(k)
	if v == nil {
		return Binding{}, false, nil
	}
	b, err = decodeBinding(k, v)
	return b, err == nil, err
}

func decodeBinding(k, v []byte) (Binding, error) {
	var b Binding
	if err := json.Unmarshal(v, &b); err != nil {
		return Binding{}, fmt.Errorf("binding %q: %w: %w", k, ErrCorrupt, err)
	}
	return b, nil
}

// putBinding replaces the binding of b.Repo:b.Tag and rewrites its index
// entries. b must have been normalized.
func putBinding(tx *bolt.Tx, b Binding) error {
	old, ok, err := getBinding(tx, b.Repo, b.Tag)
	if err != nil {
		return err
	}
	refs := tx.Bucket(bucketBindingRefs)
	if ok {
		for _, d := range refDigests(old) {
			if err := refs.Delete(key(old.Repo, string(d), old.Tag)); err != nil {
				return err
			}
		}
	}
	v, err := json.Marshal(b)
	if err != nil {
		return fmt.Errorf("encode binding %s:%s: %w", b.Repo, b.Tag, err)
	}
	if err := tx.Bucket(bucketBindings).Put(key(b.Repo, b.Tag), v); err != nil {
		return err
	}
	for _, d := range refDigests(b) {
		if err := refs.Put(key(b.Repo, string(d), b.Tag), nil); err != nil {
			return err
		}
	}
	return nil
}

// refDigests lists the digests a binding is indexed under.
func refDigests(b Binding) []digest.Digest {
	return append([]digest.Digest{b.Digest}, b.Closure...)
}

// normalizeBindings validates bindings and returns copies whose Closure has
// no duplicates and not the binding's own Digest.
func normalizeBindings(in []Binding) ([]Binding, error) {
	out := make([]Binding, len(in))
	for i, b := range in {
		if err := checkName("repository", b.Repo); err != nil {
			return nil, err
		}
		if err := checkName("tag", b.Tag); err != nil {
			return nil, err
		}
		if err := checkDigest("digest of "+b.Repo+":"+b.Tag, b.Digest); err != nil {
			return nil, err
		}
		switch b.Mode {
		case ModeImmutable, ModeMutable, ModeWarn:
		default:
			return nil, fmt.Errorf("binding %s:%s: mode %q: %w", b.Repo, b.Tag, b.Mode, ErrInvalid)
		}
		closure := make([]digest.Digest, 0, len(b.Closure))
		seen := map[digest.Digest]bool{b.Digest: true}
		for _, d := range b.Closure {
			if err := checkDigest("closure of "+b.Repo+":"+b.Tag, d); err != nil {
				return nil, err
			}
			if !seen[d] {
				seen[d] = true
				closure = append(closure, d)
			}
		}
		if len(closure) == 0 {
			closure = nil
		}
		b.Closure = closure
		out[i] = b
	}
	return out, nil
}
