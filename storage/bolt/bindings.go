package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	digest "github.com/opencontainers/go-digest"
	bbolt "go.etcd.io/bbolt"

	"github.com/taglock/taglock/storage"
)

// Binding implements storage.Ledger.
func (l *Ledger) Binding(ctx context.Context, repo, tag string) (storage.Binding, error) {
	var b storage.Binding
	err := l.view(ctx, func(tx *bbolt.Tx) error {
		var ok bool
		var err error
		b, ok, err = getBinding(tx, repo, tag)
		if err == nil && !ok {
			err = fmt.Errorf("binding %s:%s: %w", repo, tag, storage.ErrNotFound)
		}
		return err
	})
	return b, err
}

// Bindings implements storage.Ledger.
func (l *Ledger) Bindings(ctx context.Context, repo string) ([]storage.Binding, error) {
	return l.BindingsAfter(ctx, repo, "", 0)
}

// BindingsAfter implements storage.Ledger from the key after repo:after.
func (l *Ledger) BindingsAfter(ctx context.Context, repo, after string, limit int) ([]storage.Binding, error) {
	var out []storage.Binding
	err := l.view(ctx, func(tx *bbolt.Tx) error {
		p := prefix(repo)
		c := tx.Bucket(bucketBindings).Cursor()
		start := p
		if after != "" {
			start = append(key(repo, after), 0) // the first key past repo:after
		}
		for k, v := c.Seek(start); k != nil && bytes.HasPrefix(k, p) && (limit <= 0 || len(out) < limit); k, v = c.Next() {
			b, err := decodeBinding(k, v)
			if err != nil {
				return err
			}
			out = append(out, b)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Repositories implements storage.Ledger.
func (l *Ledger) Repositories(ctx context.Context) ([]string, error) {
	return l.RepositoriesAfter(ctx, "", 0)
}

// RepositoriesAfter implements storage.Ledger. It skips from one
// repository to the next with the cursor rather than reading every
// binding.
func (l *Ledger) RepositoriesAfter(ctx context.Context, after string, limit int) ([]string, error) {
	var out []string
	err := l.view(ctx, func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketBindings).Cursor()
		var k []byte
		if after == "" {
			k, _ = c.First()
		} else {
			k, _ = c.Seek(prefixEnd(prefix(after)))
		}
		for k != nil && (limit <= 0 || len(out) < limit) {
			parts, ok := splitKey(k, 2)
			if !ok {
				return fmt.Errorf("binding key %q: %w", k, storage.ErrCorrupt)
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

// Referencing implements storage.Ledger with the binding_refs index.
func (l *Ledger) Referencing(ctx context.Context, repo string, d digest.Digest) ([]storage.Binding, error) {
	var out []storage.Binding
	err := l.view(ctx, func(tx *bbolt.Tx) error {
		p := prefix(repo, string(d))
		return forPrefix(tx.Bucket(bucketBindingRefs), p, func(k, _ []byte) (bool, error) {
			tag := string(k[len(p):])
			b, ok, err := getBinding(tx, repo, tag)
			if err != nil {
				return false, err
			}
			if !ok {
				return false, fmt.Errorf("index entry %s:%s@%s has no binding: %w", repo, tag, d, storage.ErrCorrupt)
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

// Put implements storage.Ledger in one transaction.
func (l *Ledger) Put(ctx context.Context, bindings []storage.Binding, events []storage.Event) error {
	bindings, err := storage.NormalizeBindings(bindings)
	if err != nil {
		return err
	}
	if err := storage.ValidateEvents(events); err != nil {
		return err
	}
	return l.update(ctx, func(tx *bbolt.Tx) error {
		for _, b := range bindings {
			if err := l.putBinding(tx, b); err != nil {
				return err
			}
		}
		return l.appendEvents(tx, events)
	})
}

// getBinding reads one binding; ok is false when there is none.
func getBinding(tx *bbolt.Tx, repo, tag string) (b storage.Binding, ok bool, err error) {
	k := key(repo, tag)
	v := tx.Bucket(bucketBindings).Get(k)
	if v == nil {
		return storage.Binding{}, false, nil
	}
	b, err = decodeBinding(k, v)
	return b, err == nil, err
}

func decodeBinding(k, v []byte) (storage.Binding, error) {
	var b storage.Binding
	if err := json.Unmarshal(v, &b); err != nil {
		return storage.Binding{}, fmt.Errorf("binding %q: %w: %w", k, storage.ErrCorrupt, err)
	}
	return b, nil
}

// putBinding replaces the binding of b.Repo:b.Tag and rewrites its index
// entries and the counts, and tells the watchers once the transaction
// commits. b must have been normalized.
func (l *Ledger) putBinding(tx *bbolt.Tx, b storage.Binding) error {
	tx.OnCommit(func() { l.feed.publish(storage.BindingChange{Repo: b.Repo, Tag: b.Tag}) })
	old, ok, err := getBinding(tx, b.Repo, b.Tag)
	if err != nil {
		return err
	}
	if err := countBinding(tx, b, old, ok); err != nil {
		return err
	}
	refs := tx.Bucket(bucketBindingRefs)
	if ok {
		for _, d := range old.RefDigests() {
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
	for _, d := range b.RefDigests() {
		if err := refs.Put(key(b.Repo, string(d), b.Tag), nil); err != nil {
			return err
		}
	}
	return nil
}
